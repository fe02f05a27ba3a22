"""API teacher: build a sequence-level distillation set from a proprietary model's answers.

``prompts`` (prompt sets) -> ``client``/``generate``/``batches`` (resumable, rate-limited, priced
collection into ``store``) -> ``filters`` (QC, ``syntax``, ``consistency``) -> ``filtered.jsonl``
for :class:`distill.data.chat.ChatPairsSource`. The command line is ``distill-teacher-data``
(:mod:`distill.teachers.api.cli`); see docs/api_teacher.md.
"""
