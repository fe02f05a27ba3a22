"""``teacher=remote``: per-token top-k log-probs from a server instead of a local teacher model.

For teachers that do not fit beside the student: the teacher runs elsewhere (a vLLM server on a
GPU machine in production, ``distill-serve-teacher`` over a local HF model for tests and CPU
users), and training receives a sparse :class:`~distill.types.TeacherOutput`, the same form an
offline cache gives (``teacher=cached``), so the sparse-teacher losses (``loss=kd_chunked``,
``loss=kd_fused``) train from it unchanged.

The wire format is vLLM's OpenAI-compatible ``POST /v1/completions`` with its ``prompt_logprobs``
extension. Each request sends token ids (student and teacher share one tokenizer)::

    {"model": M, "prompt": [[ids of row 0], [ids of row 1], ...], "max_tokens": 1,
     "prompt_logprobs": K, "temperature": 1.0}

and each ``choices[j]`` (``index`` = row) carries ``prompt_logprobs``: a list as long as the prompt
whose entry ``i`` maps token ids (as strings in JSON) to ``{"logprob", "rank", "decoded_token"}`` for
the distribution that *predicted* token ``i``; entry 0 is ``null``. vLLM adds the prompt's own
token when it is outside the top K (K + 1 entries, rank > K): such entries are dropped here.
Position ``t`` of a row (which predicts token ``t + 1``) therefore reads entry ``t + 1``; the last
position predicts past the row and is never in a loss (its target is -100), so it gets the same
harmless dummy distribution as padding.

Requests also carry ``vocab_size``, the run's tokenizer size: ``distill-serve-teacher`` normalises
over those first ids, as the cache and the online teacher do (a vLLM server ignores the field; ids
beyond it are dropped from the head).

The log-probs are the teacher's at temperature 1 (the loss applies its own temperature). The
head is completed by its tail mass ``1 - sum(exp(head))`` and renormalised as the cache's
rows are (:func:`distill.teachers.cached.renormalize`).

Requests are batched (``batch_size`` rows each, ``concurrency`` in flight), retried with
exponential backoff on connection errors, timeouts, 429 and 5xx, and fail at once, quoting the
server, on other 4xx answers (a bad request does not get better by retrying).
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

from distill.teachers.base import Teacher
from distill.teachers.cached import renormalize
from distill.types import ModelInfo, Need, TeacherKind, TeacherOutput

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class RemoteTeacherError(RuntimeError):
    """The teacher server could not be reached or answered something unusable."""


class RemoteTeacher(Teacher):
    """A sparse teacher served over HTTP (vLLM's completions schema with ``prompt_logprobs``).

    Args:
        url: server root, e.g. ``http://127.0.0.1:8000`` (``/v1/completions`` is appended).
        model: the served model name (vLLM: ``--served-model-name`` or the path it was started
            with); None asks the server's ``/v1/models`` for its first model.
        k: log-probs per position (vLLM caps it at ``--max-logprobs``, 20 by default).
        batch_size: rows per request.
        concurrency: requests in flight at once.
        timeout_s: seconds per request before it counts as failed (and is retried).
        retries: extra attempts after a failed request.
        backoff_s: wait before the first retry; doubles after each.
        tokenizer: the tokenizer the server's model uses (checked against the student's).
        info: the teacher's shapes ``{hidden_size, num_layers, num_heads, vocab_size}``, all
            optional (see :meth:`info`).
        api_key: sent as ``Authorization: Bearer`` when set (vLLM ``--api-key``).
        renormalize: make each position's head and tail sum to 1 (see the module doc).
    """

    kind = TeacherKind.SPARSE

    def __init__(self, url: str, model: str | None = None, k: int = 20, batch_size: int = 8, concurrency: int = 1,
                 timeout_s: float = 120.0, retries: int = 4, backoff_s: float = 1.0, tokenizer: str | None = None,
                 info: dict | None = None, api_key: str | None = None, renormalize: bool = True):
        if k < 1:
            raise ValueError(f"teacher.k must be >= 1, got {k}")
        for name, value in (("batch_size", batch_size), ("concurrency", concurrency)):
            if value < 1:
                raise ValueError(f"teacher.{name} must be >= 1, got {value}")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError("teacher.timeout_s must be > 0, teacher.retries and teacher.backoff_s >= 0")
        self.url, self.model, self.k = url.rstrip("/"), model, int(k)
        self.batch_size, self.concurrency = int(batch_size), int(concurrency)
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), int(retries), float(backoff_s)
        self._tokenizer, self._info, self.api_key, self.renormalize = tokenizer, info, api_key, renormalize
        self.vocab_size: int | None = None  # the run's tokenizer size, set by prepare()

    def info(self) -> ModelInfo:
        """The configured shapes; unknown ones are 0 (sparse logit losses read none of them). The
        vocabulary size comes from ``teacher.info.vocab_size``, else the tokenizer, else the server
        (``distill-serve-teacher`` lists it in ``/v1/models``; vLLM does not: set it there)."""
        given = dict(self._info or {})
        if not given.get("vocab_size"):
            if self._tokenizer is not None:
                from distill.data.tokenizer import load_tokenizer

                given["vocab_size"] = len(load_tokenizer(self._tokenizer))
            else:
                models = self._request("GET", "/v1/models").get("data") or [{}]
                mine = [m for m in models if m.get("id") == self.model] or models
                if not mine[0].get("vocab_size"):
                    raise ValueError(f"teacher=remote: {self.url} does not report its vocabulary size; set "
                                     "teacher.info.vocab_size (or teacher.tokenizer)")
                given["vocab_size"] = int(mine[0]["vocab_size"])
        return ModelInfo(**{"hidden_size": 0, "num_layers": 0, "num_heads": 0, **given})

    @property
    def tokenizer(self) -> str | None:
        return self._tokenizer

    def prepare(self, datamodule) -> None:
        """Learn the run's vocabulary: the teacher's distribution is over the tokenizer's ids only
        (as the cache's and the online teacher's are: padded embedding rows are never compared)."""
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:
            self.vocab_size = len(tokenizer)

    def load(self, attn_implementation: str | None = None) -> None:
        """Nothing to load; finds the served model's name when none was configured."""
        if self.model is None:
            models = self._request("GET", "/v1/models").get("data") or []
            if not models:
                raise RemoteTeacherError(f"teacher=remote: {self.url}/v1/models lists no model; set teacher.model")
            self.model = models[0]["id"]
            log.info("teacher=remote: using the served model %r at %s", self.model, self.url)

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if e.code not in RETRY_STATUS:
                    raise RemoteTeacherError(f"teacher=remote: {method} {self.url}{path} was refused with HTTP "
                                             f"{e.code}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            log.warning("teacher=remote: %s %s failed (%s); attempt %d of %d", method, path, last, attempt + 1,
                        self.retries + 1)
        raise RemoteTeacherError(
            f"teacher=remote: {method} {self.url}{path} failed {self.retries + 1} times (last: {last}). Is the server "
            "up at teacher.url? Start one with `distill-serve-teacher --model <HF folder>` or `vllm serve <model> "
            f"--max-logprobs {self.k}`; raise teacher.timeout_s or teacher.retries for a slow one.")

    def _rows(self, prompts: list[list[int]], k: int | None = None) -> list[list]:
        body = {"model": self.model, "prompt": prompts, "max_tokens": 1, "temperature": 1.0,
                "prompt_logprobs": self.k if k is None else k}
        if self.vocab_size is not None:
            # distill-serve-teacher normalises over these first ids; vLLM ignores the field (it
            # logs it), its padded rows then count in the tail (and are dropped from the head).
            body["vocab_size"] = self.vocab_size
        answer = self._request("POST", "/v1/completions", body)
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise RemoteTeacherError(f"teacher=remote: sent {len(prompts)} prompts, the server answered "
                                     f"{len(choices)} choices")
        out = []
        for prompt, choice in zip(prompts, choices):
            rows = choice.get("prompt_logprobs")
            if rows is None or len(rows) != len(prompt):
                raise RemoteTeacherError(
                    f"teacher=remote: the server gave no prompt_logprobs of the prompt's length ({len(prompt)} "
                    f"tokens, got {None if rows is None else len(rows)}); it must support vLLM's prompt_logprobs")
            out.append(rows)
        return out

    # ------------------------------------------------------------------ teacher signal
    def fetch(self, prompts: list[list[int]], k: int | None = None) -> list[list]:
        """``prompt_logprobs`` of each prompt, in order (batched, ``concurrency`` requests at once);
        ``k`` log-probs per position (default ``teacher.k``)."""
        if self.model is None:
            self.load()
        chunks = [prompts[i:i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
        if self.concurrency == 1 or len(chunks) == 1:
            results = [self._rows(c, k) for c in chunks]
        else:
            with ThreadPoolExecutor(self.concurrency) as pool:
                results = list(pool.map(lambda c: self._rows(c, k), chunks))
        return [rows for chunk in results for rows in chunk]

    def _top(self, entry: dict) -> tuple[list[int], list[float]]:
        items = [(int(tok), float(v["logprob"]), v.get("rank")) for tok, v in entry.items()]
        if all(r is not None for _, _, r in items):
            items = [it for it in items if it[2] <= self.k]  # drop vLLM's extra prompt-token entry
        if self.vocab_size is not None:
            items = [it for it in items if it[0] < self.vocab_size]
        items.sort(key=lambda it: -it[1])
        items = items[: self.k]
        if len(items) < self.k:
            raise RemoteTeacherError(f"teacher=remote: the server returned {len(items)} log-probs per position, "
                                     f"fewer than teacher.k={self.k} inside the run's {self.vocab_size} token ids; "
                                     "lower teacher.k or raise the server's --max-logprobs")
        return [i for i, _, _ in items], [v for _, v, _ in items]

    def sampled(self, batch: dict) -> TeacherOutput:
        """Only the log-prob of each row's own next token (``loss=opd``): entry ``t + 1`` of the
        row's ``prompt_logprobs`` always holds the prompt token itself (vLLM adds it, with its rank,
        when it is outside the top K), so the request asks for the smallest head (1) and reads
        that entry. Position ``t`` of ``sampled_logprobs`` is ``log p(input_ids[t + 1])``: the
        next-token target wherever one applies (0 elsewhere)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = torch.zeros(ids.shape, dtype=torch.float64)
        lengths = mask.sum(-1).tolist()
        prompts = [ids[i, : int(n)].tolist() for i, n in enumerate(lengths)]
        rows_of = [i for i, p in enumerate(prompts) if p]
        for i, rows in zip(rows_of, self.fetch([prompts[i] for i in rows_of], k=1)):
            for t in range(len(rows) - 1):
                entry = rows[t + 1] or {}
                got = entry.get(str(prompts[i][t + 1]))
                if got is None:
                    raise RemoteTeacherError(
                        f"teacher=remote: the server's prompt_logprobs of row {i}, token {t + 1} do not include the "
                        "prompt token itself; sampled-token scoring needs vLLM's convention (the prompt token "
                        "always listed, with its rank)")
                out[i, t] = float(got["logprob"])
        if "labels" in batch:
            from distill.losses.functional import next_token_targets

            out = out.masked_fill(next_token_targets(batch["labels"]).cpu() == -100, 0.0)
        return TeacherOutput(sampled_logprobs=out.to(ids.device))

    def __call__(self, batch: dict, needs: frozenset[str]) -> TeacherOutput:
        if Need.TEACHER_SAMPLED_LOGPROB in needs and Need.TEACHER_LOGITS not in needs:
            # no full-distribution loss: the top-k head is not asked for at all
            return self.sampled(batch)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        b, length, k = ids.shape[0], ids.shape[1], self.k
        lengths = mask.sum(-1).tolist()
        prompts = [ids[i, : int(n)].tolist() for i, n in enumerate(lengths)]
        # Padding and each row's last position are never in a loss: a valid dummy distribution
        # (ids 0..K-1 at 1/(K+1) each) keeps them finite, as for the cache's padding.
        top_ids = torch.arange(k).expand(b, length, k).clone()
        values = torch.full((b, length, k), -math.log(k + 1), dtype=torch.float32)
        tail = torch.full((b, length), 1.0 / (k + 1), dtype=torch.float32)
        rows_of = [i for i, p in enumerate(prompts) if p]  # an all-padding row has nothing to ask
        for i, rows in zip(rows_of, self.fetch([prompts[i] for i in rows_of])):
            for t in range(len(rows) - 1):
                tok, lp = self._top(rows[t + 1])
                top_ids[i, t] = torch.tensor(tok)
                values[i, t] = torch.tensor(lp, dtype=torch.float32)
            head = values[i, : len(rows) - 1].double().exp().sum(-1)
            tail[i, : len(rows) - 1] = (1.0 - head).clamp_min(0.0).float()
        lp = renormalize(values, tail, sampled=False) if self.renormalize else values
        return TeacherOutput(topk_ids=top_ids.to(ids.device), topk_logprobs=lp.to(ids.device), sampled=False)
