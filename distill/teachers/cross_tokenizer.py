"""``teacher=cross_tokenizer``: an online teacher with its **own** tokenizer, aligned to the student's.

Cross-tokenizer distillation (ULD, Boizard et al., 2024; TRL's GOLD) needs, for every student
position, the teacher's next-token distribution after *the same text*. The two tokenizers cut the
text at different places, so the positions are matched by character (byte) spans, as GOLD does:

1. each student example's token ids are turned back into their bytes and the text is re-encoded
   with the teacher's tokenizer (:class:`SpanAlignment`, a
   :class:`~distill.data.datamodule.BatchHook` the teacher adds in :meth:`prepare` through the
   DataModule's public seam);
2. student position ``i`` (whose prefix ends at byte ``e_i``) is paired with the teacher position
   whose prefix ends at the same byte, when the teacher has a token boundary there; positions
   without one have no teacher row (``TeacherOutput.positions`` False, so ULD skips them);
3. each batch carries ``teacher_input_ids``, ``teacher_attention_mask`` and ``teacher_align``
   (``(B, L_s)``: the teacher position of each student position, or -1); :meth:`__call__` runs the
   teacher on its own ids and gathers its logits to ``(B, L_s, V_t)``.

Choice where GOLD goes further: GOLD also merges the probabilities of the tokens inside spans
whose boundaries differ; here such positions are left out (for two byte-level BPEs trained on the
same corpus most boundaries coincide). The share of aligned positions is logged each step as
``train/aligned``.

Only losses that need no shared vocabulary can read these logits (``loss=uld``); the vocabulary
check of :mod:`distill.validate` refuses the others with that fix in the message.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch

from distill.types import ModelInfo, Need, TeacherKind, TeacherOutput
from distill.teachers.base import Teacher

log = logging.getLogger(__name__)

BATCH_KEYS = ("teacher_input_ids", "teacher_attention_mask", "teacher_align")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte -> printable-character map used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tokenizer, ids: list[int]) -> list[bytes]:
    """The bytes each token id stands for (special tokens: their text in UTF-8).

    Byte-level BPE tokens map back exactly; any other tokenizer falls back to decoding each id on
    its own (exact for most SentencePiece vocabularies, approximate where a token is a partial
    character).
    """
    decoder = _byte_decoder()
    special = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    out = []
    for i, piece in zip(ids, tokenizer.convert_ids_to_tokens(list(ids))):
        if i in special:
            out.append(special[i].encode("utf-8"))
        elif piece is not None and all(ch in decoder for ch in piece):
            out.append(bytes(decoder[ch] for ch in piece))
        else:
            out.append(tokenizer.decode([i]).encode("utf-8"))
    return out


def _valid_utf8_window(data: bytes) -> tuple[int, int]:
    """``(start, end)`` of the longest slice without a character cut off at either end (a packed
    block may begin or end inside a multi-byte character)."""
    start = 0
    while start < len(data) and start < 4 and (data[start] & 0xC0) == 0x80:
        start += 1
    for end in range(len(data), max(start, len(data) - 4) - 1, -1):
        try:
            data[start:end].decode("utf-8")
            return start, end
        except UnicodeDecodeError:
            continue
    return start, start


def align(student_tok, teacher_tok, student_ids: list[int]) -> tuple[list[int], list[int]]:
    """Teacher token ids for the text of ``student_ids`` and, per student position, the teacher
    position whose prefix ends at the same byte (or -1).

    Returns:
        ``(teacher_ids, alignment)`` with ``len(alignment) == len(student_ids)``.
    """
    pieces = token_bytes(student_tok, student_ids)
    data = b"".join(pieces)
    start, end = _valid_utf8_window(data)
    text = data[start:end].decode("utf-8")
    teacher_ids = teacher_tok(text, add_special_tokens=False)["input_ids"]
    t_pieces = token_bytes(teacher_tok, teacher_ids)
    if sum(map(len, t_pieces)) != end - start:
        # the teacher's tokenizer normalises the text (it does not round-trip): no safe alignment
        return teacher_ids or [teacher_tok.pad_token_id or 0], [-1] * len(student_ids)
    ends: dict[int, int] = {}
    pos = start
    for j, piece in enumerate(t_pieces):
        pos += len(piece)
        ends[pos] = j
    alignment, pos = [], 0
    for piece in pieces:
        pos += len(piece)
        alignment.append(ends.get(pos, -1))
    if not teacher_ids:
        teacher_ids = [teacher_tok.pad_token_id or 0]
    return teacher_ids, alignment


class SpanAlignment:
    """The :class:`~distill.data.datamodule.BatchHook` that adds the teacher's ids and the alignment."""

    def __init__(self, student_tok, teacher_tok):
        self.student_tok, self.teacher_tok = student_tok, teacher_tok
        self.pad_id = teacher_tok.pad_token_id if teacher_tok.pad_token_id is not None else 0

    def example(self, split: str, index: int, example: dict) -> dict:
        ids, alignment = align(self.student_tok, self.teacher_tok, list(example["input_ids"]))
        out = dict(example)  # the DataModule's own example stays as it is
        out["teacher_input_ids"], out["teacher_align"] = ids, alignment
        return out

    def batch(self, examples: list[dict], batch: dict) -> dict:
        if not examples or "teacher_input_ids" not in examples[0]:
            return batch
        n, length = len(examples), batch["input_ids"].shape[1]
        t_len = max(len(e["teacher_input_ids"]) for e in examples)
        ids = torch.full((n, t_len), self.pad_id, dtype=torch.long)
        attn = torch.zeros((n, t_len), dtype=torch.long)
        alignment = torch.full((n, length), -1, dtype=torch.long)
        for i, e in enumerate(examples):
            k = len(e["teacher_input_ids"])
            ids[i, :k] = torch.as_tensor(e["teacher_input_ids"])
            attn[i, :k] = 1
            alignment[i, : len(e["teacher_align"])] = torch.as_tensor(e["teacher_align"])
        out = dict(batch)
        out.update(teacher_input_ids=ids, teacher_attention_mask=attn, teacher_align=alignment)
        return out


class CrossTokenizerTeacher(Teacher):
    """An online teacher that reads the text with its own tokenizer (see the module docstring).

    Args:
        teacher: the online teacher (e.g. an :class:`~distill.teachers.hf.HFTeacher` whose model
            was trained with ``tokenizer``).
        tokenizer: the teacher's tokenizer folder / hub id; None with ``tokenizer_build``: the
            byte-level BPE that build describes (trained on first use, as the student's is).
        tokenizer_build: as ``student.tokenizer_build``, with ``corpus: stdlib`` (the teacher's
            tokenizer cannot follow the run's data before the data is loaded).
    """

    kind = TeacherKind.FULL
    #: read by the vocabulary check: this teacher's logits are aligned to the student's positions
    aligns_tokenizers = True

    def __init__(self, teacher: Teacher, tokenizer: str | None = None, tokenizer_build: dict | None = None):
        if not isinstance(teacher, Teacher) or teacher.kind != TeacherKind.FULL:
            raise ValueError("teacher.teacher must be an online teacher (full logits, e.g. distill.teachers.hf.HFTeacher); "
                             "a cached teacher stores top-k rows of the student's tokenization and cannot be re-aligned")
        if tokenizer is None and not tokenizer_build:
            raise ValueError("teacher.tokenizer: the teacher's own tokenizer (a folder or hub id), or "
                             "teacher.tokenizer_build to train one")
        if tokenizer_build and tokenizer_build.get("corpus", "stdlib") != "stdlib":
            raise ValueError("teacher.tokenizer_build.corpus must be 'stdlib' (the teacher's tokenizer is fixed before "
                             "the run's data is read); or point teacher.tokenizer at a folder")
        self.teacher = teacher
        self._tokenizer_name, self._build = tokenizer, dict(tokenizer_build) if tokenizer_build else None
        self._tok = None
        self.hook: SpanAlignment | None = None

    def _teacher_tokenizer(self):
        if self._tok is None:
            from distill.data.tokenizer import load_tokenizer

            self._tok = load_tokenizer(self._tokenizer_name, self._build)
        return self._tok

    def info(self) -> ModelInfo | None:
        return self.teacher.info()

    @property
    def spec(self):
        """The wrapped teacher's model (its config is what the attention-kernel check reads)."""
        return self.teacher.spec

    def scoring_limit(self) -> str | None:
        return ("teacher=cross_tokenizer aligns the two tokenizations of each dataset example when the DataModule "
                "builds the batch, so it cannot score sequences generated during training. Use a teacher with the "
                "student's tokenizer (teacher=hf ...), or sequences=data.")

    def covers(self, batch: dict) -> bool:
        return "teacher_input_ids" in batch

    def heldout_output(self, batch: dict) -> TeacherOutput:
        # another vocabulary (ULD across tokenizers): teacher CE, agreement and KL are not per-token
        # comparable with the student's, so held-out metrics are the student's own
        return TeacherOutput.none()

    @property
    def tokenizer(self) -> str | None:
        """The teacher's tokenizer folder (trained now if ``tokenizer_build`` describes it)."""
        return str(self._teacher_tokenizer().name_or_path)

    def prepare(self, datamodule) -> None:
        teacher_tok = self._teacher_tokenizer()
        spec = self.teacher.spec
        if spec is not None and spec.tokenizer is None:
            spec.tokenizer = str(teacher_tok.name_or_path)
        info = self.teacher.info()
        if info is not None and info.vocab_size < len(teacher_tok):
            raise ValueError(f"teacher.teacher has {info.vocab_size} output rows but its tokenizer "
                             f"{teacher_tok.name_or_path!r} has {len(teacher_tok)} ids; they must belong together")
        self.hook = SpanAlignment(datamodule.tokenizer, teacher_tok)
        datamodule.add_hook(self.hook)
        self.teacher.prepare(datamodule)

    def load(self, attn_implementation: str | None = None) -> None:
        self.teacher.load(attn_implementation)

    def to(self, device: torch.device) -> "CrossTokenizerTeacher":
        self.teacher.to(device)
        return self

    @torch.no_grad()
    def __call__(self, batch: dict, needs: frozenset[str]) -> TeacherOutput:
        if "teacher_input_ids" not in batch:
            raise RuntimeError("teacher=cross_tokenizer: the batch has no teacher_input_ids; prepare(datamodule) adds "
                               "the alignment hook and must run before training (distill.build does this)")
        if Need.TEACHER_HIDDEN in needs or Need.TEACHER_ATTN in needs:
            raise ValueError("teacher=cross_tokenizer: hidden-state and attention matching compare positions one to "
                             "one, which differ across tokenizers; use loss=uld")
        out = self.teacher({"input_ids": batch["teacher_input_ids"], "attention_mask": batch["teacher_attention_mask"]},
                           frozenset({Need.TEACHER_LOGITS}))
        alignment = batch["teacher_align"]
        logits = out.logits
        rows = logits.gather(1, alignment.clamp_min(0).unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        result = TeacherOutput(logits=rows)
        result.positions = alignment >= 0
        return result


def alignment_rate(datamodule, split: str = "train", limit: int = 64) -> float:
    """Share of student positions with an aligned teacher position over the first ``limit`` examples."""
    hook = next((h for h in datamodule.hooks if isinstance(h, SpanAlignment)), None)
    if hook is None:
        raise ValueError("no SpanAlignment hook on this DataModule (prepare a CrossTokenizerTeacher first)")
    examples = datamodule.examples(split)[:limit]
    hits = total = 0
    for e in examples:
        _, a = align(hook.student_tok, hook.teacher_tok, list(e["input_ids"]))
        hits += sum(1 for x in a if x >= 0)
        total += len(a)
    return hits / max(total, 1)
