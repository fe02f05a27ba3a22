"""Reading a run directory back: metrics (all CSV versions of a resumed run), config, summary."""

from __future__ import annotations

import csv
import re
from pathlib import Path


def _version(p: Path) -> int:
    m = re.search(r"version_(\d+)", str(p))
    return int(m.group(1)) if m else -1


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """Every logged row of a run, oldest first, across the CSV versions that resumes create.

    Empty cells are dropped, numbers parsed; each row keeps its ``step``.
    """
    files = sorted(Path(run_dir).glob("csv/**/metrics.csv"), key=_version)
    rows = []
    for f in files:
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows
