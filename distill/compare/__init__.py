"""``distill-compare``: a sweep's table and plots (:mod:`distill.compare.cli`).

``load`` reads runs (local run directories or W&B), ``table`` ranks them into Markdown and CSV,
``plots`` draws the curves and the objective; a single run is a seed group of one throughout.
The names below are what scripts and studies use.
"""

from distill.compare.cli import Comparison, compare, main
from distill.compare.load import Group, Run, group_runs, load_local, load_wandb

__all__ = ["Comparison", "Group", "Run", "compare", "group_runs", "load_local", "load_wandb", "main"]
