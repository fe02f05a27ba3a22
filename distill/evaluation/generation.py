"""Where completions come from: a local HF model (plain, LoRA adapter, or a run's checkpoint),
answers recorded in a JSONL (an API teacher's generated dataset), a live API, or a benchmark's
reference solutions.

Every source implements ``generate(requests, settings, stop) -> GenerationResult`` where a
request is ``(task_id, text)``. Local models are batched with left padding, sampled with
temperature / top-p, ``n`` samples per prompt, stopped early on stop strings, and timed, so the
report can show tokens/s of generation next to pass@k.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

log = logging.getLogger(__name__)

ANSWER_TEXT_FIELDS = ("completion", "response", "answer", "output", "text", "content")


# ------------------------------------------------------------------------------------ settings
@dataclass
class GenerationSettings:
    """Keys of ``conf/eval/generation/*.yaml``.

    Attributes:
        n: samples per task; pass@k is reported for every configured k <= n.
        temperature: 0 = greedy (then n > 1 repeats the same sample; use sampling for pass@k>1).
        top_p: nucleus sampling mass (only when temperature > 0).
        max_new_tokens: generation budget per sample.
        batch_size: sequences per forward pass (local models).
        stop: stop strings for completion-style prompts; null = the benchmark's default list.
        style: ``completion`` (continue the code prompt), ``chat`` (chat template + extract the
            fenced code), ``auto`` = chat when the tokenizer has a chat template.
        seed: torch seed set before each generation call (reproducible sampling).
        max_prompt_tokens: prompts longer than this are cut from the left (null = model limit).
    """

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    batch_size: int = 8
    stop: list[str] | None = None
    style: str = "auto"
    seed: int = 1234
    max_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"generation.{key}: {why} (got {getattr(self, key)!r})")

        if int(self.n) < 1:
            raise bad("n", "must be >= 1")
        if float(self.temperature) < 0:
            raise bad("temperature", "must be >= 0")
        if not 0 < float(self.top_p) <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if int(self.max_new_tokens) < 1:
            raise bad("max_new_tokens", "must be >= 1")
        if int(self.batch_size) < 1:
            raise bad("batch_size", "must be >= 1")
        if self.style not in ("auto", "completion", "chat"):
            raise bad("style", "must be auto, completion or chat")
        if self.stop is not None:
            self.stop = [str(s) for s in self.stop]

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "GenerationSettings":
        cfg = dict(cfg or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"generation: unknown key(s) {unknown}; known keys: {sorted(known)}")
        if cfg.get("stop") is not None:
            cfg["stop"] = list(cfg["stop"])
        return cls(**cfg)

    @property
    def greedy(self) -> bool:
        return float(self.temperature) == 0.0


@dataclass
class GenerationResult:
    """``texts[i]`` holds the samples for request ``i``; token counts exclude padding."""

    texts: list[list[str]]
    new_tokens: list[list[int]]
    seconds: float

    @property
    def total_tokens(self) -> int:
        return sum(sum(t) for t in self.new_tokens)


class CompletionSource(Protocol):
    kind: str
    style: str  # the style its answers have: completion, chat, or reference

    def generate(self, requests: Sequence[tuple[str, str]], settings: GenerationSettings,
                 stop: Sequence[str] | None) -> GenerationResult: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------- model specs
@dataclass
class ModelSpec:
    """One model to evaluate (a node of ``models:`` / ``model:`` in ``conf/eval.yaml``).

    ``kind: auto`` infers the kind from the fields that are set: ``answers`` -> answers,
    ``api`` -> api, ``adapter`` -> lora, ``checkpoint`` -> checkpoint, ``path`` -> hf (or lora
    when the folder holds ``adapter_config.json``).
    """

    name: str = "model"
    role: str = "model"  # teacher | base | distilled | model
    kind: str = "auto"  # hf | lora | checkpoint | answers | api | reference
    path: str | None = None
    adapter: str | None = None
    checkpoint: str | None = None
    tokenizer: str | None = None
    answers: str | None = None
    answers_fields: dict[str, str] = field(default_factory=dict)
    api: Any = None
    dtype: str = "auto"
    device: str = "auto"
    chat: Any = "auto"
    trust_remote_code: bool = False
    merge_lora: bool = True

    ROLES = ("teacher", "base", "distilled", "model")
    KINDS = ("hf", "lora", "checkpoint", "answers", "api", "reference")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], name: str, where: str) -> "ModelSpec":
        cfg = dict(cfg or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        cfg.setdefault("name", None)
        cfg["name"] = cfg["name"] or name
        if cfg.get("answers_fields") is None:
            cfg["answers_fields"] = {}
        spec = cls(**cfg)
        spec.answers_fields = dict(spec.answers_fields)
        if spec.role not in cls.ROLES:
            raise ValueError(f"{where}.role must be one of {cls.ROLES}, got {spec.role!r}")
        kind = spec.resolved_kind(where)
        if kind in ("hf", "lora") and not (spec.path or spec.adapter):
            raise ValueError(f"{where}.path: required for kind={kind}")
        return spec

    def resolved_kind(self, where: str = "model") -> str:
        if self.kind != "auto":
            if self.kind not in self.KINDS:
                raise ValueError(f"{where}.kind must be auto or one of {self.KINDS}, "
                                 f"got {self.kind!r}")
            return self.kind
        if self.answers:
            return "answers"
        if self.api:
            return "api"
        if self.adapter:
            return "lora"
        if self.checkpoint:
            return "checkpoint"
        if self.path:
            if Path(self.path, "adapter_config.json").exists():
                return "lora"
            return "hf"
        raise ValueError(f"{where}: set one of path, adapter, checkpoint, answers, api "
                         f"(or kind: reference)")

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this model's outputs (for resume checks)."""
        d = dataclasses.asdict(self)
        d.pop("role", None)
        d.pop("device", None)
        d["kind"] = self.resolved_kind()
        return d


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"model.dtype must be auto, float32, bfloat16 or float16; got {dtype!r}")


def resolve_checkpoint(spec: ModelSpec, work_dir: Path) -> str:
    """A run's checkpoint as an HF folder.

    Accepts an exported student folder, a run directory (uses ``<run>/student`` if the run
    exported one, else exports ``checkpoints/last.ckpt``) or a ``.ckpt`` file (rebuilt from the
    run's saved Hydra config by :func:`distill.export.export_checkpoint`).
    """
    ckpt = Path(spec.checkpoint)
    if not ckpt.exists():
        raise FileNotFoundError(f"model.checkpoint: {ckpt} does not exist")
    if ckpt.is_dir():
        if (ckpt / "config.json").exists():
            return str(ckpt)
        if (ckpt / "student" / "config.json").exists():
            return str(ckpt / "student")
        run_dir, ckpt_file = ckpt, ckpt / "checkpoints" / "last.ckpt"
    else:
        ckpt_file = ckpt
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    out = work_dir / "exported_student"
    if (out / "config.json").exists():
        return str(out)
    from distill.export import export_checkpoint

    log.info("exporting %s (run %s) -> %s", ckpt_file, run_dir, out)
    export_checkpoint(run_dir, ckpt_file, out, merge_lora=True)
    return str(out)


def load_hf_model(spec: ModelSpec, work_dir: Path | None = None):
    """(model, tokenizer, device) for hf / lora / checkpoint specs; model in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = spec.resolved_kind()
    device = _pick_device(spec.device)
    dtype = _pick_dtype(spec.dtype, device)
    path = spec.path
    if kind == "checkpoint":
        path = resolve_checkpoint(spec, Path(work_dir or "."))
    adapter = spec.adapter
    if kind == "lora" and adapter is None:
        adapter, path = path, None
    if kind == "lora" and path is None:
        cfg_file = Path(adapter, "adapter_config.json")
        if not cfg_file.exists():
            raise FileNotFoundError(f"model.adapter: {cfg_file} not found")
        path = json.loads(cfg_file.read_text())["base_model_name_or_path"]
    if path is None:
        raise ValueError(f"model {spec.name}: no weights to load (set path)")
    tok_path = spec.tokenizer or (adapter if adapter and Path(adapter, "tokenizer_config.json")
                                  .exists() else path)
    log.info("loading %s model %s from %s%s", spec.role, spec.name, path,
             f" + adapter {adapter}" if adapter else "")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=spec.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                     trust_remote_code=spec.trust_remote_code)
    except OSError as exc:
        raise OSError(f"model {spec.name}: cannot load {path!r}: {exc}") from exc
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if spec.merge_lora:
            model = model.merge_and_unload()
    model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token else tokenizer.unk_token
    tokenizer.padding_side = "left"
    return model, tokenizer, device


# ------------------------------------------------------------------------------- HF generation
def _stop_criteria(stop: Sequence[str], tokenizer, prompt_len: int):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    stops = [s for s in stop if s]
    lookback = max(len(s) for s in stops) + 4  # every token decodes to >= 1 char

    class StopOnStrings(StoppingCriteria):
        """Per-row stop: a row is done once its new text contains a stop string; generation
        ends when all rows are done (finished rows are padded by ``generate``)."""

        def __call__(self, input_ids, scores, **kwargs):
            tail = input_ids[:, prompt_len:][:, -lookback:]
            texts = tokenizer.batch_decode(tail, skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stops) for t in texts],
                                device=input_ids.device, dtype=torch.bool)

    return StoppingCriteriaList([StopOnStrings()])


class HFSource:
    """A local Hugging Face causal LM."""

    kind = "hf"

    def __init__(self, model, tokenizer, device: str, chat: Any = "auto"):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat == "auto":
            chat = has_template
        elif chat and not has_template:
            raise ValueError("model.chat=true but the tokenizer has no chat template")
        self.style = "chat" if chat else "completion"

    def format(self, text: str, style: str) -> str:
        if style == "chat":
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return text

    def _limits(self, settings: GenerationSettings) -> tuple[int | None, int]:
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        max_new = int(settings.max_new_tokens)
        max_prompt = settings.max_prompt_tokens
        if max_pos:
            if max_new >= max_pos:
                max_new = max(1, max_pos // 2)
                log.warning("max_new_tokens %d >= the model's %d positions; using %d",
                            settings.max_new_tokens, max_pos, max_new)
            room = max_pos - max_new
            max_prompt = min(max_prompt or room, room)
        return max_prompt, max_new

    def generate(self, requests, settings, stop, style: str = "completion") -> GenerationResult:
        import torch

        tok = self.tokenizer
        texts = [self.format(text, style) for _, text in requests]
        n = int(settings.n)
        copies = 1 if settings.greedy else n
        if settings.greedy and n > 1:
            log.info("temperature=0: generating once per task and repeating it n=%d times", n)
        max_prompt, max_new = self._limits(settings)
        add_special = style != "chat"
        encoded = [tok(t, add_special_tokens=add_special)["input_ids"] for t in texts]
        if max_prompt:
            encoded = [ids[-max_prompt:] for ids in encoded]
        jobs = sorted(((i, j) for i in range(len(texts)) for j in range(copies)),
                      key=lambda ij: -len(encoded[ij[0]]))
        out_text: list[list[str]] = [[""] * copies for _ in texts]
        out_tok: list[list[int]] = [[0] * copies for _ in texts]
        stop_ids = {tok.eos_token_id, tok.pad_token_id} - {None}
        gen_cfg = dict(max_new_tokens=max_new, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id)
        if settings.greedy:
            gen_cfg.update(do_sample=False)
        else:
            gen_cfg.update(do_sample=True, temperature=float(settings.temperature),
                           top_p=float(settings.top_p), top_k=0)
        torch.manual_seed(int(settings.seed))
        start = time.perf_counter()
        bs = int(settings.batch_size)
        for b in range(0, len(jobs), bs):
            batch = jobs[b:b + bs]
            seqs = [encoded[i] for i, _ in batch]
            width = max(len(s) for s in seqs)
            pad = tok.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs],
                                     device=self.device)
            attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs],
                                     device=self.device)
            kwargs = dict(gen_cfg)
            if stop and style == "completion":
                kwargs["stopping_criteria"] = _stop_criteria(stop, tok, width)
            with torch.no_grad():
                out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
            new = out[:, width:].tolist()
            for (i, j), ids in zip(batch, new):
                count = len(ids)
                for k, t in enumerate(ids):
                    if t in stop_ids:
                        count = k + 1
                        break
                out_tok[i][j] = count
                out_text[i][j] = tok.decode(ids[:count], skip_special_tokens=True)
        seconds = time.perf_counter() - start
        if copies < n:
            out_text = [row * n for row in out_text]
            out_tok = [row + [0] * (n - 1) for row in out_tok]  # tokens were generated once
        return GenerationResult(out_text, out_tok, seconds)

    def close(self) -> None:
        self.model = None


# ----------------------------------------------------------------------------- other sources
class ReferenceSource:
    """The benchmark's own reference solutions (checks a benchmark + sandbox end to end)."""

    kind = "reference"
    style = "reference"

    def __init__(self, references: Mapping[str, str | None]):
        self.references = references

    def generate(self, requests, settings, stop, style: str = "reference") -> GenerationResult:
        texts = []
        for task_id, _ in requests:
            ref = self.references.get(task_id)
            if ref is None:
                raise KeyError(f"task {task_id} has no reference solution (kind: reference)")
            texts.append([ref] * int(settings.n))
        return GenerationResult(texts, [[0] * int(settings.n) for _ in texts], 0.0)

    def close(self) -> None:
        pass


class AnswersSource:
    """Answers recorded earlier, e.g. the API teacher's generated dataset (JSONL).

    Rows are matched to tasks by ``task_id`` when the rows have one, else by the prompt text
    (the benchmark prompt, or the chat message built from it). A row may carry one answer or a
    list of answers; several rows per task add up. Field names are configurable through
    ``answers_fields: {task_id: ..., prompt: ..., text: ...}``.
    """

    kind = "answers"
    style = "chat"

    def __init__(self, path: str | Path, fields: Mapping[str, str] | None = None,
                 style: str = "chat"):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"model.answers: {self.path} does not exist")
        fields = dict(fields or {})
        self.style = style
        self.by_id: dict[str, list[str]] = {}
        self.by_prompt: dict[str, list[str]] = {}
        id_key, prompt_key = fields.get("task_id", "task_id"), fields.get("prompt", "prompt")
        text_key = fields.get("text")
        with self.path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{self.path}:{lineno}: not valid JSON ({exc.msg})") from None
                key = text_key or next((k for k in ANSWER_TEXT_FIELDS if k in row), None)
                if key is None or key not in row:
                    raise KeyError(f"{self.path}:{lineno}: no answer field (looked for "
                                   f"{[text_key] if text_key else list(ANSWER_TEXT_FIELDS)}); "
                                   f"set model.answers_fields.text")
                answers = row[key] if isinstance(row[key], list) else [row[key]]
                if row.get(id_key) is not None:
                    self.by_id.setdefault(str(row[id_key]), []).extend(answers)
                elif row.get(prompt_key) is not None:
                    self.by_prompt.setdefault(str(row[prompt_key]).strip(), []).extend(answers)
                else:
                    raise KeyError(f"{self.path}:{lineno}: needs {id_key!r} or {prompt_key!r}")

    def generate(self, requests, settings, stop, style: str = "chat",
                 raw_prompts: Sequence[str] | None = None) -> GenerationResult:
        n = int(settings.n)
        texts = []
        for idx, (task_id, text) in enumerate(requests):
            found = self.by_id.get(task_id)
            if found is None:
                for cand in (text, raw_prompts[idx] if raw_prompts else None):
                    if cand is not None and cand.strip() in self.by_prompt:
                        found = self.by_prompt[cand.strip()]
                        break
            if not found:
                raise KeyError(f"model.answers: {self.path} has no answer for task {task_id}")
            if len(found) < n:
                raise ValueError(f"model.answers: {self.path} has {len(found)} answer(s) for "
                                 f"{task_id}, generation.n={n} needs {n}")
            texts.append(list(found[:n]))
        return GenerationResult(texts, [[0] * n for _ in texts], 0.0)

    def close(self) -> None:
        pass


class ApiClient(Protocol):
    def complete(self, prompt: str, *, max_tokens: int, temperature: float, top_p: float,
                 stop: Sequence[str] | None) -> tuple[str, int]: ...


class AnthropicClient:
    """A live call to the Anthropic Messages API (``pip install anthropic``; reads the key from
    ``ANTHROPIC_API_KEY``, never from the config)."""

    def __init__(self, model: str, max_retries: int = 3, timeout: float = 120.0):
        try:
            import anthropic
        except ImportError as exc:  # pragma: no cover
            raise ImportError("model.api: the anthropic client needs `pip install anthropic`") from exc
        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise RuntimeError("model.api: ANTHROPIC_API_KEY is not set")
        self.model = model
        self.client = anthropic.Anthropic(max_retries=max_retries, timeout=timeout)

    def complete(self, prompt, *, max_tokens, temperature, top_p, stop):
        kwargs: dict[str, Any] = dict(model=self.model, max_tokens=max_tokens,
                                      temperature=temperature,
                                      messages=[{"role": "user", "content": prompt}])
        if stop:
            kwargs["stop_sequences"] = list(stop)
        msg = self.client.messages.create(**kwargs)
        text = "".join(getattr(block, "text", "") for block in msg.content)
        return text, int(getattr(msg.usage, "output_tokens", 0) or 0)


class ApiSource:
    """Live answers from an API client (``complete(prompt, ...) -> (text, output_tokens)``)."""

    kind = "api"
    style = "chat"

    def __init__(self, client: ApiClient, concurrency: int = 4):
        self.client = client
        self.concurrency = max(1, int(concurrency))

    def generate(self, requests, settings, stop, style: str = "chat") -> GenerationResult:
        from concurrent.futures import ThreadPoolExecutor

        n = int(settings.n)
        jobs = [(i, j, text) for i, (_, text) in enumerate(requests) for j in range(n)]
        texts = [[""] * n for _ in requests]
        tokens = [[0] * n for _ in requests]

        def call(job):
            i, j, text = job
            out, used = self.client.complete(text, max_tokens=int(settings.max_new_tokens),
                                             temperature=float(settings.temperature),
                                             top_p=float(settings.top_p), stop=None)
            texts[i][j], tokens[i][j] = out, used

        start = time.perf_counter()
        with ThreadPoolExecutor(self.concurrency) as pool:
            list(pool.map(call, jobs))
        return GenerationResult(texts, tokens, time.perf_counter() - start)

    def close(self) -> None:
        pass


def build_source(spec: ModelSpec, references: Mapping[str, str | None], work_dir: Path
                 ) -> CompletionSource:
    """The completion source a model spec describes (loads weights for local models)."""
    kind = spec.resolved_kind()
    if kind == "reference":
        return ReferenceSource(references)
    if kind == "answers":
        # recorded answers are chat replies unless the spec says chat: false
        style = "completion" if spec.chat is False else "chat"
        return AnswersSource(spec.answers, spec.answers_fields, style=style)
    if kind == "api":
        api = spec.api
        if isinstance(api, Mapping):
            from hydra.utils import instantiate

            client = instantiate(dict(api))
        else:
            client = api
        if not hasattr(client, "complete"):
            raise TypeError(f"model.api must build an object with complete(prompt, ...); got "
                            f"{type(client).__name__}")
        return ApiSource(client)
    model, tokenizer, device = load_hf_model(spec, work_dir)
    return HFSource(model, tokenizer, device, spec.chat)
