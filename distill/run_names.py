"""Readable names for the runs of a sweep: the keys that vary, and nothing else.

Hydra's ``override_dirname`` spells out every override of a job, including the ones that are
the same in every run of the sweep (``trainer.max_steps=60``) and whole ``_target_`` dicts with
braces and colons. A run here is named by the keys the sweep varies (comma lists, ``range``,
``choice`` and ``glob`` on the command line, and an Optuna sweeper's ``params``), with dict values
shortened to the class they build. The full overrides stay in each run's saved config and in
``.hydra/overrides.yaml``, which is what ``distill-compare`` reads.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping

_TARGET = re.compile(r"_target_\s*:\s*['\"]?([\w.]+)")
_UNSAFE = re.compile(r"[^\w.=,+\-@%]")


def _key(override: str) -> str:
    return override.lstrip("~+").split("=", 1)[0]


def swept_keys(argv: Iterable[str], sweeper_params: Mapping | None = None) -> set[str]:
    """Keys whose value differs between the runs of the sweep ``argv`` starts."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in argv if "=" in a and not a.startswith("-") and not a.startswith("hydra.")]
    keys = set()
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:  # an argument Hydra itself will report; names fall back to every override
        return {_key(a) for a in args}
    for o in overrides:
        if o.is_sweep_override():
            keys.add(o.key_or_group)
    keys.update(str(k) for k in (sweeper_params or {}))
    return keys


def short_value(value: str) -> str:
    """A value as it should read in a directory name: a ``_target_`` dict becomes its class name."""
    value = value.strip()
    if value.startswith("{"):
        m = _TARGET.search(value)
        if m:
            return m.group(1).rsplit(".", 1)[-1]
    return _UNSAFE.sub("_", value)


def run_name(task_overrides: Iterable[str], swept: set[str], exclude: Iterable[str] = (),
             fallback: str = "run") -> str:
    """``key=value,...`` over the swept keys of one job's overrides (``fallback`` when none vary,
    e.g. a multirun config composed in Python, whose command line says nothing)."""
    excluded = set(exclude)
    parts = []
    for o in task_overrides:
        key = _key(o)
        if key in swept and key not in excluded and "=" in o:
            parts.append(f"{key}={short_value(o.split('=', 1)[1])}")
    return ",".join(parts) or fallback


def hydra_run_name(_root_) -> str:
    """OmegaConf resolver ``${distill.run_name:}``, for ``hydra.sweep.subdir`` and W&B run names."""
    hydra = _root_.hydra
    exclude = list(hydra.job.config.override_dirname.get("exclude_keys") or [])
    params = hydra.sweeper.get("params") if "sweeper" in hydra else None
    return run_name(list(hydra.overrides.task or []), swept_keys(sys.argv[1:], params), exclude,
                    fallback=str(hydra.job.get("override_dirname") or "run"))
