"""``distill-eval``: pass@k on a code benchmark, held-out text metrics, and a comparison report.

``run_eval(cfg)`` does the work and is what tests call (with a config composed by Hydra's compose
API); :func:`main` is the thin ``@hydra.main`` wrapper behind the console script. See
``conf/eval.yaml`` for usage and ``docs/evaluation.md`` for what the sandbox isolates.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

from distill.evaluation.benchmarks import load_benchmark
from distill.evaluation.model_config import EvalModelConfig
from distill.evaluation.settings import GenerationSettings
from distill.evaluation.sources import HFSource, build_source
from distill.data.vocab import same_vocabulary
from distill.evaluation.heldout import HeldoutSettings, evaluate_heldout, load_texts
from distill.evaluation.report import write_report
from distill.evaluation.runner import evaluate_model
from distill.sandbox import Sandbox, SandboxConfig
from distill.config import app_errors, prepare_app

log = logging.getLogger(__name__)

# Absolute, like distill.train: Hydra resolves a relative config_path as a Python package when
# the app runs from an installed console script.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _container(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _default_name(spec: Mapping[str, Any]) -> str:
    for key in ("path", "adapter", "checkpoint", "answers"):
        if spec.get(key):
            p = Path(str(spec[key]).rstrip("/"))
            name = p.name
            if name in ("student", "checkpoints", "last.ckpt") and p.parent.name:
                name = f"{p.parent.name}-{name}"
            return name
    return str(spec.get("kind") or "model")


def safe_name(name: str) -> str:
    """A model name as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def model_specs(cfg: DictConfig) -> list[EvalModelConfig]:
    """``models`` (a comparison) if set, else the single ``model``."""
    models = _container(cfg.get("models")) or {}
    if models:
        specs = []
        for key, node in models.items():
            if node is None:
                continue  # `models.x=null` removes a preset entry
            node = dict(node)
            node["name"] = node.get("name") or key
            specs.append(EvalModelConfig.from_mapping(node, key, f"models.{key}"))
        if not specs:
            raise ValueError("models: every entry is null")
    else:
        node = dict(_container(cfg.get("model")) or {})
        node["name"] = node.get("name") or _default_name(node)
        specs = [EvalModelConfig.from_mapping(node, node["name"], "model")]
    names = [safe_name(s.name) for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"models: names must be unique as folder names, got {names}")
    if sum(s.role == "teacher" for s in specs) > 1:
        raise ValueError("models: at most one model may have role=teacher")
    return specs


def _heldout_for(spec: EvalModelConfig, source, teacher: HFSource | None, texts: list[str],
                 settings: HeldoutSettings, work: Path) -> dict[str, Any] | None:
    if not isinstance(source, HFSource):
        return None
    key = {"settings": vars(settings), "teacher": None if teacher is None or teacher is source
           else teacher.fingerprint}
    cache = work / "heldout.json"
    if cache.exists():
        old = json.loads(cache.read_text())
        if old.get("key") == json.loads(json.dumps(key)):
            return old["metrics"]
    use_teacher = None
    note = None
    if teacher is not None and teacher is not source:
        if same_vocabulary(source.tokenizer, teacher.tokenizer):
            use_teacher = teacher.model
        else:
            note = "teacher tokenizer differs: agreement and KL not computed"
            log.warning("%s: %s", spec.name, note)
    metrics = evaluate_heldout(source.model, source.tokenizer, texts, settings, use_teacher,
                               source.device)
    if teacher is source:  # the teacher's own row: its loss is the "student" loss of itself
        metrics = {"ppl": metrics["ppl"], "loss": metrics["loss"], "tokens": metrics["tokens"]}
    if note:
        metrics["note"] = note
    cache.write_text(json.dumps({"key": key, "metrics": metrics}, indent=2, default=str))
    return metrics


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every configured model; write per-model results and (for several) a report."""
    if cfg.get("threads"):  # as distill-train's `threads`: intra-op threads for generation
        import torch

        torch.set_num_threads(int(cfg.threads))
    benchmark = load_benchmark(_container(cfg.benchmark))
    settings = GenerationSettings.from_mapping(_container(cfg.generation))
    sandbox_cfg = SandboxConfig.from_mapping(_container(cfg.sandbox))
    heldout = HeldoutSettings.from_mapping(_container(cfg.get("heldout")))
    specs = model_specs(cfg)
    ks = [int(k) for k in (cfg.get("ks") or [1])]
    if any(k < 1 for k in ks):
        raise ValueError(f"ks: every k must be >= 1, got {ks}")
    out = Path(str(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    log.info("benchmark %s: %d tasks from %s", benchmark.name, len(benchmark), benchmark.source)

    texts = load_texts(heldout) if heldout.enabled else []
    refs = {t.task_id: t.reference for t in benchmark.tasks}
    # The teacher goes first so its weights can stay loaded for the students' held-out metrics.
    specs = sorted(specs, key=lambda s: s.role != "teacher")
    summaries: list[dict[str, Any]] = []
    teacher_source: HFSource | None = None
    with Sandbox(sandbox_cfg) as sandbox:
        for spec in specs:
            work = out / safe_name(spec.name)
            source = build_source(spec, refs, work)
            keep = False
            try:
                summary = evaluate_model(source, spec, benchmark, settings, sandbox, work, ks,
                                         overwrite=bool(cfg.get("overwrite", False)))
                if texts:
                    if spec.role == "teacher" and isinstance(source, HFSource):
                        source.fingerprint = spec.fingerprint()
                        teacher_source, keep = source, True
                    summary["heldout"] = _heldout_for(spec, source, teacher_source, texts,
                                                      heldout, work)
                    (work / "summary.json").write_text(json.dumps(summary, indent=2))
            finally:
                if not keep:
                    source.close()
            summaries.append(summary)
            p1 = summary.get("pass@1")
            log.info("%s (%s): %s", spec.name, spec.role,
                     ", ".join(f"{k}={v:.3f}" for k, v in summary["pass_at_k"].items()) or
                     f"pass@1={p1}")
    if teacher_source is not None:
        teacher_source.close()

    report_cfg = _container(cfg.get("report")) or {}
    enabled = report_cfg.get("enabled", "auto")
    paths: dict[str, Path] = {}
    if enabled is True or (enabled == "auto" and len(summaries) > 1):
        paths = write_report(summaries, out, title=report_cfg.get("title"),
                             samples=int(report_cfg.get("samples", 3)),
                             sample_lines=int(report_cfg.get("sample_lines", 30)))
        log.info("report: %s", paths["report"])
    return {"models": summaries, "report": {k: str(v) for k, v in paths.items()},
            "output_dir": str(out)}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def _hydra_main(cfg: DictConfig) -> float | None:
    with app_errors():
        result = run_eval(cfg)
    first = result["models"][0] if result["models"] else {}
    return first.get("pass@1")


def main() -> None:
    prepare_app()
    _hydra_main()


if __name__ == "__main__":
    main()
