"""API teacher: build a sequence-level distillation set from a proprietary model's answers.

Modules, lowest first (each imports only modules above it in this list, never the other way):

* ``catalogue`` (what prompts can be about), ``mix`` (weighted quotas), ``bugs`` (planted bugs),
  ``syntax`` (code blocks and per-language parsing), ``code_files`` (functions from a source tree), ``promptset`` (:class:`Prompt`, ids, the file),
  ``rationale`` (the reasoning-then-code response format and its parser), ``prompts`` (rendering a
  seeded prompt set);
* ``pricing``, ``ratelimit`` (token buckets for RPM / ITPM / OTPM, kept across restarts),
  ``client`` (retries, headers), ``store`` (the crash-safe results file), ``sampling`` (settings,
  work keys, one request's body);
* ``batches`` (Message Batches) and ``generate`` (the resumable run, which calls ``batches``);
* ``consistency`` (sandboxed tests, ranking), ``filters`` (QC, per-model numbers),
  ``report`` (``dataset_report.md``/``.png``);
* ``cli``: ``distill-teacher-data``, see docs/api_teacher.md.

The result, ``filtered.jsonl``, feeds :class:`distill.data.chat.ChatPairsSource` (``data=api_sft``)
or :class:`distill.data.chat.MultiTaskChatSource` (``data=api_rationale``).
"""
