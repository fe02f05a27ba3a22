"""Reading runs for ``distill-compare``: local Hydra run directories or a W&B project, and their
grouping by seed.

A run is a directory holding ``.hydra/overrides.yaml`` (what Hydra writes for every job) and, from
the :class:`~distill.callbacks.SaveResolvedConfig` Hydra callback in ``conf/train.yaml``,
``config_resolved.yaml``; its metrics come from ``csv/version_*/metrics.csv``
(:func:`distill.runs.read_metrics`) and, when the end-of-run summary ran, ``summary.json``
(``summary/gap_closed``: the share of the CE-only-student-to-teacher gap that distillation closed)
and, where an evaluation after training wrote one, ``eval.json`` (its numbers as they are named there).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from distill.provenance import RESOLVED_CONFIG

log = logging.getLogger(__name__)

SEED_KEY = "seed"
#: a flat JSON object of numbers (e.g. ``{"eval/greedy_teacher_nll": 1.9}``) that an evaluation after
#: training wrote into the run directory: its keys become metric columns like the logged ones
EVAL_FILE = "eval.json"


@dataclass
class Run:
    """One run, from either source: overrides, logged rows (oldest first) and final values."""

    name: str
    params: dict[str, str]
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    path: str = ""


@dataclass
class Group:
    """Runs that differ only in the seed: one setting, ``n`` measurements. Without seed grouping
    each run is a group of one, so the table and the plots have one code path."""

    params: dict[str, str]
    runs: list[Run]

    @property
    def name(self) -> str:
        return ",".join(r.name for r in self.runs)

    def stats(self, metric: str) -> tuple[float | None, float | None, int]:
        """``(mean, sample std, n)`` of the runs' final values (std None when n < 2)."""
        values = [r.final[metric] for r in self.runs if metric in r.final and math.isfinite(r.final[metric])]
        n = len(values)
        if n == 0:
            return None, None, 0
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        return mean, std, n


def tokenizer_of(run: Run) -> str | None:
    """What identifies a run's student tokenizer, from its saved config (None: not recorded).

    ``student.tokenizer`` is the folder or hub id the run really loaded (the build writes it back,
    and :func:`distill.provenance.record_models` saves it: a trained BPE's folder is keyed by its
    settings and data, ``bpe-<vocab>-<key>``); a config logged before the build (W&B) has it null
    and the trained tokenizer's ``tokenizer_build`` settings instead. Equal ids: one tokenizer, so
    per-token losses compare; different ids: compare bits per byte.
    """
    student = run.config.get("student") if isinstance(run.config, dict) else None
    if not isinstance(student, dict):
        return None
    if student.get("tokenizer"):
        return str(student["tokenizer"])
    build = student.get("tokenizer_build")
    if isinstance(build, dict) and build:
        return "build:" + json.dumps({k: v for k, v in build.items() if k != "dir"}, sort_keys=True, default=str)
    return None


def tokenizer_label(run: Run) -> str:
    """A short name of :func:`tokenizer_of` for a table cell: the folder's last part."""
    ident = tokenizer_of(run)
    if ident is None:
        return "?"
    if ident.startswith("build:"):
        build = json.loads(ident[len("build:"):])
        return f"bpe-{build.get('vocab_size', '?')} ({build.get('corpus', '?')})"
    return Path(ident.rstrip("/")).name or ident


def tokenizers(runs: Sequence[Run]) -> list[str]:
    """The distinct recorded student tokenizers of ``runs`` (runs that recorded none are left out)."""
    seen = [t for t in (tokenizer_of(r) for r in runs) if t is not None]
    return sorted(set(seen))


def varies_seed(runs: Sequence[Run], seed_key: str = SEED_KEY) -> bool:
    return len({r.params.get(seed_key) for r in runs}) > 1


def group_runs(runs: Sequence[Run], by_seed: bool, seed_key: str = SEED_KEY) -> list[Group]:
    """``by_seed``: runs with equal overrides apart from ``seed_key``, in first-seen order; otherwise
    one group per run."""
    if not by_seed:
        return [Group(r.params, [r]) for r in runs]
    groups: dict[tuple, Group] = {}
    for r in runs:
        params = {k: v for k, v in r.params.items() if k != seed_key}
        key = tuple(sorted(params.items()))
        groups.setdefault(key, Group(params, [])).runs.append(r)
    return list(groups.values())


def parse_override(text: str) -> tuple[str, str]:
    """``'+loss.weights.ce=0.5'`` -> ``('loss.weights.ce', '0.5')``; a deletion ``~key`` -> ``(key, '~')``."""
    text = text.strip()
    if text.startswith("~"):
        return text.lstrip("~").split("=", 1)[0], "~"
    key, _, value = text.lstrip("+").partition("=")
    return key, value


def final_values(history: Iterable[dict[str, float]]) -> dict[str, float]:
    """The last logged value of every metric."""
    final: dict[str, float] = {}
    for row in history:
        final.update(row)
    return final


def natural_key(name: str) -> list:
    """Sort key that puts ``2`` before ``10`` (Hydra numbers sweep jobs without padding)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def find_run_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` (or ``root`` itself) holding ``.hydra/overrides.yaml``."""
    dirs = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    if (root / ".hydra" / "overrides.yaml").exists():
        dirs.add(root)
    return sorted(dirs, key=lambda d: natural_key(str(d.relative_to(root))))


def _json_numbers(path: Path, prefix: str = "") -> dict[str, float]:
    """The top-level numbers of a JSON object file whose keys start with ``prefix`` ({} without the file)."""
    if not path.exists():
        return {}
    return {k: float(v) for k, v in json.loads(path.read_text()).items()
            if k.startswith(prefix) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def load_local(sweep_dir: str | Path) -> list[Run]:
    """Every run under a sweep directory (a single run directory works too)."""
    import yaml

    from distill.runs import read_metrics

    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"distill-compare: sweep directory {root} does not exist")
    dirs = find_run_dirs(root)
    if not dirs:
        raise FileNotFoundError(f"distill-compare: no run directories (with .hydra/overrides.yaml) under {root}")
    runs = []
    for d in dirs:
        overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or []
        config_file = d / RESOLVED_CONFIG if (d / RESOLVED_CONFIG).exists() else d / ".hydra" / "config.yaml"
        config = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
        history = read_metrics(d)
        final = final_values(history)
        final.update(_json_numbers(d / "summary.json", prefix="summary/"))
        final.update(_json_numbers(d / EVAL_FILE))  # numbers a post-training evaluation wrote beside the run
        if not history:
            log.warning("%s: no metrics logged (failed or still running?)", d)
        name = "." if d == root else str(d.relative_to(root))
        # Hydra names sweep subdirs <job number>_<overrides>; the overrides are columns already
        name = re.sub(r"^(\d+)_.*$", r"\1", name)
        runs.append(Run(name=name, params=dict(parse_override(o) for o in overrides), history=history,
                        final=final, config=config or {}, path=str(d)))
    return runs


def _flatten(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            if not str(k).startswith("_"):
                out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, (list, dict)) else str(node)}


def load_wandb(project: str, group: str | None, api: Any = None) -> list[Run]:
    """Runs of a W&B project (``entity/project``), optionally one group. Needs the network."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        raise RuntimeError(f"distill-compare --wandb needs the W&B API, but WANDB_MODE={os.environ['WANDB_MODE']}; "
                           "compare the local sweep directory instead")
    if api is None:
        import wandb

        api = wandb.Api()
    filters = {"group": group} if group else {}
    runs = []
    for r in api.runs(project, filters=filters):
        config = dict(r.config)
        overrides = config.get("overrides")
        history = []
        for row in r.scan_history():
            step = row.get("trainer/global_step", row.get("_step"))
            values = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not k.startswith("_")
                      and v is not None}
            if step is not None:
                values["step"] = float(step)
            history.append(values)
        final = {k: float(v) for k, v in dict(r.summary).items()
                 if isinstance(v, (int, float)) and not k.startswith("_")}
        params = dict(parse_override(o) for o in overrides) if isinstance(overrides, list) else {}
        runs.append(Run(name=r.name, params=params, history=history, final=final, config=config,
                        path=getattr(r, "url", "") or ""))
    if not runs:
        raise LookupError(f"distill-compare: no W&B runs in {project}" + (f" with group {group!r}" if group else ""))
    if not any(r.params for r in runs):
        # runs not started by distill's logger: compare their flattened configs instead
        for r in runs:
            r.params = _flatten(r.config)
    return list(reversed(runs))  # the API lists newest first
