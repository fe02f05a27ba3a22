"""A Hugging Face model card for an exported student, from what the run recorded.

Everything comes from the run folder, nothing is typed in by hand:

* ``config_resolved.yaml`` (else ``.hydra/config.yaml``): teacher, student, loss with its
  weights and schedules, data, steps;
* ``.hydra/overrides.yaml``: the exact command (``distill-train <overrides>``);
* ``summary.json``: held-out loss / perplexity of the teacher, the CE-only and the distilled
  student, and the gap closed;
* ``distill-eval`` summaries (``<eval dir>/**/summary.json``): pass@k per benchmark;
* the exports made next to it (ONNX, GGUF) with their check results.

The YAML header is built with ``huggingface_hub``'s ``ModelCardData`` (base model, library, tags,
datasets, and a ``model-index`` of the held-out and benchmark results), so the folder is ready for
``push_to_hub``; nothing here uploads.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

CARD_FILE = "README.md"
APPS = {"train": "distill-train", "eval": "distill-eval"}


def _load_cfg(run_dir: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    for name in ("config_resolved.yaml", ".hydra/config.yaml"):
        path = run_dir / name
        if path.exists():
            cfg = OmegaConf.load(path)
            try:
                return OmegaConf.to_container(cfg, resolve=True)
            except Exception:  # ${hydra:...} outside a Hydra app: keep the text as written
                return OmegaConf.to_container(cfg, resolve=False)
    raise FileNotFoundError(f"{run_dir}: neither config_resolved.yaml nor .hydra/config.yaml; "
                            f"pass the run directory distill-train wrote")


def run_command(run_dir: str | Path) -> str | None:
    """The command line that made the run, from Hydra's ``.hydra/overrides.yaml``."""
    import yaml

    run_dir = Path(run_dir)
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return None
    overrides = yaml.safe_load(path.read_text()) or []
    app = "distill-train"
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.exists():
        job = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("job", {})
        app = APPS.get(str(job.get("config_name")), app)
    return " ".join([app, *(shlex.quote(str(o)) for o in overrides)])


def _target(node: Any) -> str:
    if isinstance(node, Mapping) and "_target_" in node:
        return str(node["_target_"]).rsplit(".", 1)[-1]
    return str(node)


def _compact(node: Any) -> str:
    """A schedule or value on one line: ``Cosine(start=0.5, end=0.0, steps=600)`` or ``1.0``."""
    if isinstance(node, Mapping) and "_target_" in node:
        args = ", ".join(f"{k}={_compact(v)}" for k, v in node.items() if k != "_target_")
        return f"{_target(node)}({args})"
    if isinstance(node, Mapping):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in node.items()) + "}"
    if isinstance(node, list):
        return "[" + ", ".join(_compact(v) for v in node) + "]"
    return str(node)


def describe_model(spec: Mapping[str, Any] | None) -> str:
    """``Qwen/Qwen2.5-Coder-0.5B`` or ``llama, 2 layers x 96 wide, 4 heads, vocab 2048 (from config)``."""
    if not spec:
        return "none"
    parts = []
    if spec.get("name_or_path"):
        parts.append(f"`{spec['name_or_path']}`")
    cfg = spec.get("config") or {}
    if cfg:
        parts.append(f"{cfg.get('model_type', '?')}, {cfg.get('num_hidden_layers', '?')} layers x "
                     f"{cfg.get('hidden_size', '?')} wide, {cfg.get('num_attention_heads', '?')} "
                     f"heads, vocab {cfg.get('vocab_size', '?')}"
                     + (" (from config)" if not spec.get("name_or_path") else ""))
    if spec.get("lora"):
        parts.append(f"LoRA {_compact(spec['lora'])}")
    if spec.get("quantization"):
        parts.append(f"{spec['quantization']} quantised")
    return "; ".join(parts) or _compact(spec)


def describe_teacher(teacher: Mapping[str, Any] | None) -> str:
    if not teacher or teacher.get("_target_") is None or _target(teacher) == "NoTeacher":
        return "none (hard labels, or sequence-level KD on teacher-written data)"
    if teacher.get("model") is None and teacher.get("source"):
        text = f"{_target(teacher)}: logits of teacher `{teacher['source']}` ({teacher.get('mode')}, k={teacher.get('k')})"
    else:
        text = f"{_target(teacher)}: {describe_model(teacher.get('model'))}"
    pre = teacher.get("pretrain")
    if pre:
        text += f"; pretrained here on the run's data for {pre.get('steps')} steps"
    if teacher.get("path"):
        text += f"; cached in `{teacher['path']}`"
    return text


def describe_loss(loss: Mapping[str, Any] | None) -> list[str]:
    if not loss:
        return ["not recorded"]
    lines = [f"{_target(loss)}, temperature {_compact(loss.get('temperature', 1.0))}"]
    weights = loss.get("weights") or {}
    for name, comp in (loss.get("components") or {}).items():
        extra = {k: v for k, v in comp.items() if k != "_target_"} if isinstance(comp, Mapping) else {}
        lines.append(f"`{name}`: {_target(comp)}{' ' + _compact(extra) if extra else ''}, "
                     f"weight {_compact(weights.get(name, 1.0))}")
    return lines


def describe_data(data: Mapping[str, Any] | None) -> str:
    if not data:
        return "not recorded"
    src = data.get("source") or {}
    keys = {k: v for k, v in src.items() if k not in ("_target_", "cache_dir") and v is not None}
    return (f"{_target(src)} {_compact(keys)}; sequences of {data.get('seq_len')} tokens, "
            f"batch {data.get('batch_size')}")


def hub_datasets(data: Mapping[str, Any] | None) -> list[str]:
    """Dataset ids for the card metadata: only hub ids, never local paths."""
    src = (data or {}).get("source") or {}
    path = src.get("path")
    if isinstance(path, str) and "/" in path and not Path(path).exists() \
            and not path.startswith(("/", ".", "~")) and path.count("/") == 1:
        return [path]
    return []


def read_eval_summaries(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """``distill-eval`` per-model summaries: a summary.json, or every one under a folder."""
    out = []
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else sorted(p.rglob("summary.json"))
        for f in files:
            data = json.loads(f.read_text())
            if "pass_at_k" in data:
                out.append(data)
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


def model_card(run_dir: str | Path, *, name: str | None = None, steps: int | None = None,
               evals: Sequence[Mapping[str, Any]] = (), exports: Mapping[str, Any] | None = None):
    """The card (a ``huggingface_hub.ModelCard``) for the student of ``run_dir``."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    run_dir = Path(run_dir)
    cfg = _load_cfg(run_dir)
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    student = cfg.get("student") or {}
    name = name or f"distill-{run_dir.name}"
    max_steps = (cfg.get("trainer") or {}).get("max_steps")

    results = []
    held = (summary.get("student") or {})
    data_name = _target((cfg.get("data") or {}).get("source") or {}) + " held-out split"
    for metric in ("loss", "ppl"):
        if isinstance(held.get(metric), (int, float)):
            results.append(EvalResult(task_type="text-generation", dataset_type="heldout",
                                      dataset_name=data_name, metric_type=metric,
                                      metric_name=f"held-out {metric}", metric_value=held[metric]))
    for e in evals:
        for k, v in (e.get("pass_at_k") or {}).items():
            results.append(EvalResult(task_type="text-generation", dataset_type=e["benchmark"],
                                      dataset_name=e["benchmark"], metric_type=k, metric_value=v))
    base = student.get("name_or_path")
    data = ModelCardData(
        model_name=name, library_name="transformers", pipeline_tag="text-generation",
        base_model=base if isinstance(base, str) and not Path(base).exists() else None,
        datasets=hub_datasets(cfg.get("data")) or None,
        tags=["distill", "knowledge-distillation", "code", "causal-lm"]
        + [t for t in ("onnx", "gguf") if (exports or {}).get(t)],
        eval_results=results or None)

    lines = [f"# {name}", "",
             "A student model trained with `distill` (a Lightning + Hydra "
             "knowledge-distillation framework). Everything below is read from the training run's own "
             "records.", "", "## How it was made", "",
             "| | |", "|---|---|",
             f"| teacher | {describe_teacher(cfg.get('teacher'))} |",
             f"| student | {describe_model(student)} |",
             f"| loss | {'<br>'.join(describe_loss(cfg.get('loss')))} |",
             f"| data | {describe_data(cfg.get('data'))} |",
             f"| steps | {steps if steps is not None else max_steps} optimizer steps"
             + (f" (of trainer.max_steps={max_steps})" if steps not in (None, max_steps) else "")
             + f", seed {cfg.get('seed')} |", ""]
    pruning = (student.get("loaded") or {}).get("pruning")
    if pruning:  # student=pruned: what was cut from the teacher (distill.pruning)
        lines[-1:-1] = [f"| cut from the teacher | layers {pruning.get('kept_layers')} of "
                        f"{pruning.get('teacher_layers')} ({pruning.get('method')}); MLP width "
                        f"{(pruning.get('intermediate_size') or {}).get('student')} of "
                        f"{(pruning.get('intermediate_size') or {}).get('teacher')} |"]
    command = run_command(run_dir)
    lines += ["## Command", "", "```bash", command or "# not recorded: the run was not started "
              "through distill-train (no .hydra/overrides.yaml)", "```", ""]
    lines += ["## Held-out metrics", ""]
    if summary:
        lines += ["From `summary.json` (per token, on the held-out split of the training data).", "",
                  "| model | loss | ppl | top-1 agreement with teacher |", "|---|---|---|---|"]
        for label, key in (("teacher", "teacher"), ("student, CE only", "baseline"),
                           ("student, distilled", "student")):
            row = summary.get(key)
            if row:
                lines.append(f"| {label} | {_fmt(row.get('loss'))} | {_fmt(row.get('ppl'))} | "
                             f"{_fmt(row.get('agreement'))} |")
        if summary.get("summary/gap_closed") is not None:
            lines += ["", f"Distillation closed {100 * summary['summary/gap_closed']:.1f}% of the "
                          f"CE-student-to-teacher gap."]
    else:
        lines.append("No `summary.json` in the run (summary disabled).")
    lines.append("")
    if evals:
        lines += ["## Code benchmarks (distill-eval)", "",
                  "| benchmark | tasks | n | pass@k | strict accuracy | test-case average |",
                  "|---|---|---|---|---|---|"]
        for e in evals:
            pk = ", ".join(f"{k}={v:.3f}" for k, v in (e.get("pass_at_k") or {}).items())
            lines.append(f"| {e['benchmark']} | {e.get('num_tasks')} | {e.get('n')} | {pk} | "
                         f"{_fmt(e.get('strict_accuracy'))} | {_fmt(e.get('test_case_average'))} |")
        lines.append("")
    if exports:
        lines += ["## Exports", ""]
        for fmt, info in exports.items():
            lines.append(f"- **{fmt}**: {_compact(info)}")
        lines.append("")
    lines += ["## Use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(\"<this folder or repo id>\")",
              "model = AutoModelForCausalLM.from_pretrained(\"<this folder or repo id>\")",
              "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_model_card(run_dir: str | Path, out_dir: str | Path, **kwargs) -> Path:
    """Write ``out_dir/README.md`` (see :func:`model_card` for the keyword arguments)."""
    path = Path(out_dir) / CARD_FILE
    model_card(run_dir, **kwargs).save(path)
    return path
