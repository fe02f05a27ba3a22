"""``teacher=cross_tokenizer``: an online teacher with its **own** tokenizer, aligned to the student's.

The student's token ids are turned back into their bytes and the text is re-encoded with the
teacher's tokenizer, batch by batch, in :meth:`CrossTokenizerTeacher.__call__`: so the teacher
scores whatever the batch holds, the data's text or sequences the student sampled during
training (on-policy). Two losses read it, each through its own alignment:

**Distributions (ULD).** Cross-tokenizer distillation (ULD, Boizard et al., 2024; TRL's GOLD)
needs, for every student position, the teacher's next-token distribution after *the same text*.
Student position ``i`` (whose prefix ends at byte ``e_i``) is paired with the teacher position
whose prefix ends at the same byte, when the teacher has a token boundary there (:func:`align`);
positions without one have no teacher row (``TeacherOutput.positions`` False, so ULD skips them).
The teacher runs on its own ids and its logits are gathered to ``(B, L_s, V_t)``. Choice where
GOLD goes further: GOLD also merges the probabilities of the tokens inside spans whose boundaries
differ; here such positions are left out (for two byte-level BPEs trained on the same corpus most
boundaries coincide). The share of aligned positions is logged each step as ``train/aligned``.
Only losses that need no shared vocabulary can read these logits (``loss=uld``); the vocabulary
check of :mod:`distill.validate` refuses the others with that fix in the message.

**Sampled log-probs (OPD).** ``loss=opd`` asks only ``Need.TEACHER_SAMPLED_LOGPROB``: the
teacher's log-prob of each token the student wrote. Each row's text is scored in the teacher's
tokens and the per-token log-probs are mapped onto the student's tokens by byte spans with
:func:`distill.data.byte_spans.span_logprobs` (a teacher token is counted, whole, at the student
token in which it ends; a character split into byte pieces ends at its last byte; see that
module). So the sum over a row's student tokens is the teacher's log-likelihood of the row's
text, and the value at a student token depends only on bytes written by then. Bytes that are not
valid UTF-8 (a student may sample half a character) reach the teacher as U+FFFD, each invalid byte
one character, still attributed by their position in the student's bytes (:func:`decode_bytes`).
The teacher's first token has no context and gets 0 unless its tokenizer starts every text with a
BOS token (then the BOS is prepended and every text token is scored).
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from functools import lru_cache
from itertools import accumulate

import torch

from distill.types import ModelInfo, Need, TeacherKind, TeacherOutput
from distill.teachers.base import Teacher

log = logging.getLogger(__name__)

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


def decode_bytes(data: bytes) -> tuple[str, list[int]]:
    """``data`` as text (each byte that is not part of a valid UTF-8 character becomes U+FFFD) and,
    per character, the offset in ``data`` where it ends."""
    try:
        text = data.decode("utf-8")
        return text, list(accumulate(len(ch.encode("utf-8")) for ch in text))
    except UnicodeDecodeError:
        pass
    chars, ends, pos = [], [], 0
    while pos < len(data):
        lead = data[pos]
        width = 1 if lead < 0x80 else 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else \
            4 if 0xF0 <= lead <= 0xF4 else 0
        try:
            ch = data[pos:pos + width].decode("utf-8") if width else None
        except UnicodeDecodeError:
            ch = None
        if ch is None or len(ch) != 1:
            ch, width = "\ufffd", 1
        chars.append(ch)
        pos += width
        ends.append(pos)
    return "".join(chars), ends


def span_offsets(student_tok, teacher_tok, student_ids: list[int], bos_id: int | None = None
                 ) -> tuple[list[int], list[tuple[int, int]], list[tuple[int, int]]]:
    """The teacher's ids for the text of ``student_ids`` and both sides' byte spans over the
    student's bytes, as :func:`distill.data.byte_spans.span_logprobs` reads them.

    Returns:
        ``(teacher_ids, student_offsets, teacher_offsets)``: ``len(student_offsets) ==
        len(student_ids)``; ``teacher_offsets`` has one span per teacher id (``bos_id``, when given,
        first with the empty span ``(0, 0)``).
    """
    pieces = token_bytes(student_tok, student_ids)
    text, char_ends = decode_bytes(b"".join(pieces))

    def char_byte(c: int) -> int:  # the byte where the text's first c characters end
        return char_ends[c - 1] if c > 0 else 0

    s_offsets, start = [], 0
    for end in accumulate(len(p) for p in pieces):
        # a piece of a split character ends where the character does (the byte_spans rule)
        end = char_ends[bisect_left(char_ends, end)] if end > 0 else 0
        s_offsets.append((start, end))
        start = end
    enc = teacher_tok(text, return_offsets_mapping=True, add_special_tokens=False) if text else \
        {"input_ids": [], "offset_mapping": []}
    t_ids = list(enc["input_ids"])
    t_offsets = [(char_byte(a), char_byte(b)) for a, b in enc["offset_mapping"]]
    if bos_id is not None:
        t_ids, t_offsets = [bos_id] + t_ids, [(0, 0)] + t_offsets
    return t_ids, s_offsets, t_offsets


def aligned_batch(student_tok, teacher_tok, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  pad_id: int) -> dict[str, torch.Tensor]:
    """``teacher_input_ids`` / ``teacher_attention_mask`` (right-padded) and ``teacher_align``
    ``(B, L_s)`` (the teacher position of each student position, or -1) for a batch (:func:`align`
    on each row's tokens under its attention mask)."""
    rows, positions = [], []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        pos = [i for i, m in enumerate(mask) if m]
        t_ids, alignment = align(student_tok, teacher_tok, [ids[i] for i in pos]) if pos else ([pad_id], [])
        rows.append((t_ids, alignment))
        positions.append(pos)
    n, length = input_ids.shape
    t_len = max(len(t) for t, _ in rows)
    ids = torch.full((n, t_len), pad_id, dtype=torch.long)
    attn = torch.zeros((n, t_len), dtype=torch.long)
    alignment = torch.full((n, length), -1, dtype=torch.long)
    for b, ((t_ids, a), pos) in enumerate(zip(rows, positions)):
        ids[b, :len(t_ids)] = torch.as_tensor(t_ids)
        attn[b, :len(t_ids)] = 1
        if pos:
            alignment[b, pos] = torch.as_tensor(a)
    device = input_ids.device
    return {"teacher_input_ids": ids.to(device), "teacher_attention_mask": attn.to(device),
            "teacher_align": alignment.to(device)}


class CrossTokenizerTeacher(Teacher):
    """An online teacher that reads the text with its own tokenizer (see the module docstring).

    Args:
        teacher: the online teacher (e.g. an :class:`~distill.teachers.hf.HFTeacher` whose model
            was trained with ``tokenizer``).
        tokenizer: the teacher's tokenizer folder / hub id; None: the wrapped model's own (its
            folder, or an installed GGUF file's converted folder); None with ``tokenizer_build``: the
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
        if tokenizer is None and not tokenizer_build and getattr(teacher, "spec", None) is None:
            raise ValueError("teacher.tokenizer: the teacher's own tokenizer (a folder or hub id), or "
                             "teacher.tokenizer_build to train one")
        if tokenizer_build and tokenizer_build.get("corpus", "stdlib") != "stdlib":
            raise ValueError("teacher.tokenizer_build.corpus must be 'stdlib' (the teacher's tokenizer is fixed before "
                             "the run's data is read); or point teacher.tokenizer at a folder")
        self.teacher = teacher
        self._tokenizer_name, self._build = tokenizer, dict(tokenizer_build) if tokenizer_build else None
        self._tok = None
        self.student_tok = None  # the run's tokenizer, from prepare()

    def _teacher_tokenizer(self):
        if self._tok is None:
            from distill.data.tokenizer import load_tokenizer

            name = self._tokenizer_name
            if name is None and not self._build:
                # the wrapped model's own (an installed GGUF's converted folder: known only once converted)
                name = self.teacher.spec.tokenizer
            self._tok = load_tokenizer(name, self._build, key="teacher.tokenizer")
        return self._tok

    def info(self) -> ModelInfo | None:
        return self.teacher.info()

    @property
    def spec(self):
        """The wrapped teacher's model (its config is what the attention-kernel check reads)."""
        return self.teacher.spec

    def covers(self, batch: dict) -> bool:
        return True  # it re-tokenizes any batch itself

    def heldout_output(self, batch: dict) -> TeacherOutput:
        # another vocabulary (ULD across tokenizers): teacher CE, agreement and KL are not per-token
        # comparable with the student's, so held-out metrics are the student's own
        return TeacherOutput.none()

    @property
    def tokenizer(self) -> str | None:
        """The teacher's tokenizer folder (trained now if ``tokenizer_build`` describes it)."""
        return str(self._teacher_tokenizer().name_or_path)

    def connect(self, student_tokenizer) -> "CrossTokenizerTeacher":
        """Read batches as ``student_tokenizer``'s ids (:meth:`prepare` takes the run's)."""
        self.student_tok = student_tokenizer
        return self

    def prepare(self, datamodule) -> None:
        teacher_tok = self._teacher_tokenizer()
        spec = self.teacher.spec
        if spec is not None and spec.tokenizer is None:
            spec.tokenizer = str(teacher_tok.name_or_path)
        info = self.teacher.info()
        if info is not None and info.vocab_size < len(teacher_tok):
            raise ValueError(f"teacher.teacher has {info.vocab_size} output rows but its tokenizer "
                             f"{teacher_tok.name_or_path!r} has {len(teacher_tok)} ids; they must belong together")
        self.connect(datamodule.tokenizer)
        self.teacher.prepare(datamodule)

    def load(self, attn_implementation: str | None = None) -> None:
        self.teacher.load(attn_implementation)

    def to(self, device: torch.device) -> "CrossTokenizerTeacher":
        self.teacher.to(device)
        return self

    @property
    def _pad_id(self) -> int:
        tok = self._teacher_tokenizer()
        return tok.pad_token_id if tok.pad_token_id is not None else 0

    @property
    def bos_id(self) -> int | None:
        """The BOS id the teacher's tokenizer starts every text with, or None (it adds none)."""
        tok = self._teacher_tokenizer()
        if not hasattr(self, "_bos"):
            probe = tok("a")["input_ids"]  # the tokenizer's own convention, special tokens included
            self._bos = tok.bos_token_id if tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id] else None
        return self._bos

    @torch.no_grad()
    def __call__(self, batch: dict, needs: frozenset[str]) -> TeacherOutput:
        if self.student_tok is None:
            raise RuntimeError("teacher=cross_tokenizer: no student tokenizer to read the batch with; prepare(datamodule) "
                               "(distill.build does it) or connect(tokenizer) must run before training")
        if Need.TEACHER_HIDDEN in needs or Need.TEACHER_ATTN in needs:
            raise ValueError("teacher=cross_tokenizer: hidden-state and attention matching compare positions one to "
                             "one, which differ across tokenizers; use loss=uld or loss=opd")
        result = TeacherOutput()
        if needs & {Need.TEACHER_LOGITS, Need.TEACHER_LAST_HIDDEN}:
            result = self._aligned_logits(batch)
        if Need.TEACHER_SAMPLED_LOGPROB in needs:
            result.sampled_logprobs = self.sampled_logprobs(batch)
        return result

    def _aligned_logits(self, batch: dict) -> TeacherOutput:
        fields = aligned_batch(self.student_tok, self._teacher_tokenizer(), batch["input_ids"],
                               batch["attention_mask"], self._pad_id)
        out = self.teacher({"input_ids": fields["teacher_input_ids"], "attention_mask": fields["teacher_attention_mask"]},
                           frozenset({Need.TEACHER_LOGITS}))
        alignment, logits = fields["teacher_align"], out.logits
        rows = logits.gather(1, alignment.clamp_min(0).unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        result = TeacherOutput(logits=rows)
        result.positions = alignment >= 0
        return result

    def span_scores(self, rows: list[list[int]], device: torch.device | None = None) -> list[torch.Tensor]:
        """For each row of student ids, the teacher's log-prob of each student token's byte span,
        ``(S,)`` float64 (:func:`span_offsets` + one batched teacher pass +
        :func:`~distill.data.byte_spans.span_logprobs`); each row sums to the teacher's
        log-likelihood of its text."""
        from distill.data.byte_spans import span_logprobs
        from distill.losses.functional import IGNORE_INDEX, next_token_targets
        from distill.losses.opd import sampled_token_logprobs

        tok = self._teacher_tokenizer()
        aligned = [span_offsets(self.student_tok, tok, ids, self.bos_id) for ids in rows]
        t_len = max([len(t) for t, _, _ in aligned] + [1])
        n = len(rows)
        ids = torch.full((n, t_len), self._pad_id, dtype=torch.long)
        labels = torch.full((n, t_len), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros((n, t_len), dtype=torch.long)
        for b, (t_ids, _, _) in enumerate(aligned):
            ids[b, :len(t_ids)] = labels[b, :len(t_ids)] = torch.as_tensor(t_ids, dtype=torch.long)
            attn[b, :len(t_ids)] = 1
        ids, labels, attn = (x.to(device) if device is not None else x for x in (ids, labels, attn))
        # the head over the last hidden states where the teacher allows it (no (B, L, V) logits held)
        out = self.teacher({"input_ids": ids, "attention_mask": attn, "labels": labels},
                           frozenset({Need.TEACHER_LAST_HIDDEN}))
        lp = sampled_token_logprobs(out, next_token_targets(labels), vocab=len(tok)).double()
        scores = []
        for b, (t_ids, s_off, t_off) in enumerate(aligned):
            if not s_off:
                scores.append(torch.zeros(0, dtype=torch.float64, device=lp.device))
                continue
            # teacher token j's log-prob sits at position j - 1 (the next-token convention); the
            # first has no context and counts 0
            per_token = torch.cat([lp.new_zeros(1), lp[b, :max(len(t_ids) - 1, 0)]])[:len(t_ids)]
            scores.append(span_logprobs(s_off, t_off, per_token))
        return scores

    def sampled_logprobs(self, batch: dict) -> torch.Tensor:
        """``(B, L)`` float32: at position ``t``, the teacher's log-prob of the student token at
        ``t + 1`` (its byte span), as :attr:`TeacherOutput.sampled_logprobs` holds it; 0 where no
        token follows under the attention mask."""
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        positions = [[i for i, m in enumerate(row) if m] for row in mask.tolist()]
        ids = input_ids.tolist()
        rows = [[ids[b][i] for i in pos] for b, pos in enumerate(positions)]
        scores = self.span_scores(rows, device=input_ids.device)
        out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        for b, (pos, s) in enumerate(zip(positions, scores)):
            if len(pos) > 1:
                # the token at pos[k] is the target of position pos[k - 1]
                out[b, torch.as_tensor(pos[:-1], device=out.device)] = s[1:].to(out.dtype)
        return out


def alignment_rate(teacher: CrossTokenizerTeacher, examples: list[dict]) -> float:
    """Share of student positions with an aligned teacher position (ULD) over ``examples``."""
    hits = total = 0
    for e in examples:
        _, a = align(teacher.student_tok, teacher._teacher_tokenizer(), list(e["input_ids"]))
        hits += sum(1 for x in a if x >= 0)
        total += len(a)
    return hits / max(total, 1)
