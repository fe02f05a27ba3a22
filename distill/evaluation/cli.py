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
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from distill.evaluation.benchmarks import load_benchmark
from distill.evaluation.settings import GenerationSettings
from distill.evaluation.sources.base import CompletionSource
from distill.evaluation.targets import build
from distill.data.vocab import same_vocabulary
from distill.evaluation.heldout import HeldoutSettings, evaluate_heldout, load_texts
from distill.evaluation.report import write_report
from distill.evaluation.runner import evaluate_model
from distill.sandbox import Sandbox, SandboxConfig
from distill.config import ConfigError, app_errors, prepare_app

log = logging.getLogger(__name__)

# Absolute, like distill.train: Hydra resolves a relative config_path as a Python package when
# the app runs from an installed console script.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _container(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def safe_name(name: str) -> str:
    """A model name as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def model_sources(cfg: DictConfig) -> list[CompletionSource]:
    """``models`` (a comparison) if set, else the single ``model``: each node a ``_target_``
    (``conf/eval/model/*.yaml``), built without loading anything."""
    models = cfg.get("models") or {}
    sources = []
    if models:
        for key, node in models.items():
            if node is None:
                continue  # `models.x=null` removes a preset entry
            source = build(node, f"models.{key}", CompletionSource)
            source.name = source.name or str(key)
            sources.append(source)
        if not sources:
            raise ConfigError("models: every entry is null")
    else:
        source = build(cfg.get("model"), "model", CompletionSource)
        source.name = source.name or source.default_name()
        sources = [source]
    names = [safe_name(s.name) for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"models: names must be unique as folder names, got {names}")
    if sum(s.role == "teacher" for s in sources) > 1:
        raise ConfigError("models: at most one model may have role=teacher")
    return sources


def _heldout_for(source: CompletionSource, teacher: CompletionSource | None, texts: list[str],
                 settings: HeldoutSettings, work: Path) -> dict[str, Any] | None:
    if not source.holds_weights:
        return None
    key = {"settings": vars(settings), "teacher": None if teacher is None or teacher is source
           else teacher.fingerprint()}
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
            log.warning("%s: %s", source.name, note)
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
    benchmark = load_benchmark(cfg.get("benchmark"))
    settings = GenerationSettings.from_mapping(_container(cfg.generation))
    sandbox_cfg = SandboxConfig.from_mapping(_container(cfg.sandbox))
    heldout = HeldoutSettings.from_mapping(_container(cfg.get("heldout")))
    sources = model_sources(cfg)
    ks = [int(k) for k in (cfg.get("ks") or [1])]
    if any(k < 1 for k in ks):
        raise ValueError(f"ks: every k must be >= 1, got {ks}")
    out = Path(str(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    log.info("benchmark %s: %d tasks from %s", benchmark.name, len(benchmark), benchmark.source)

    texts = load_texts(heldout) if heldout.enabled else []
    # The teacher goes first so its weights can stay loaded for the students' held-out metrics.
    sources = sorted(sources, key=lambda s: s.role != "teacher")
    summaries: list[dict[str, Any]] = []
    teacher_source: CompletionSource | None = None
    with Sandbox(sandbox_cfg) as sandbox:
        for source in sources:
            work = out / safe_name(source.name)
            keep = False
            try:
                source.open(benchmark, work)
                summary = evaluate_model(source, benchmark, settings, sandbox, work, ks,
                                         overwrite=bool(cfg.get("overwrite", False)))
                if texts:
                    if source.role == "teacher" and source.holds_weights:
                        teacher_source, keep = source, True
                    summary["heldout"] = _heldout_for(source, teacher_source, texts, heldout,
                                                      work)
                    (work / "summary.json").write_text(json.dumps(summary, indent=2))
            finally:
                if not keep:
                    source.close()
            summaries.append(summary)
            p1 = summary.get("pass@1")
            log.info("%s (%s): %s", source.name, source.role,
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
