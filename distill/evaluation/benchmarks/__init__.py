"""Code benchmarks, one module per benchmark, each a :class:`BenchmarkSpec` named by ``_target_``
in ``conf/eval/benchmark/*.yaml``: ``humaneval``, ``mbpp`` (full / sanitized), ``apps``
(APPS-style stdin/stdout and call-style cases), ``jsonl`` (any JSONL of prompts with tests).
``task`` holds the types they all produce. Held-out text metrics are not a task benchmark; they
live in :mod:`distill.evaluation.heldout`.

A new benchmark: subclass :class:`BenchmarkSpec` (in your own package if you like), implement
``read()``, and add a preset with its ``_target_``.
"""

from __future__ import annotations

from typing import Any, Mapping

from distill.evaluation.benchmarks.apps import (APPS, APPS_CHAT, APPS_DIFFICULTIES, APPS_HF_ID,
                                                APPS_SAMPLE, APPS_STOP, apps_prompt, load_apps)
from distill.evaluation.benchmarks.humaneval import (HUMANEVAL_CHAT, HUMANEVAL_STOP, HumanEval,
                                                     humaneval_path, load_humaneval)
from distill.evaluation.benchmarks.jsonl import JsonlBenchmark, load_jsonl_benchmark
from distill.evaluation.benchmarks.mbpp import (MBPP, MBPP_CHAT, MBPP_HF_IDS, MBPP_SANITIZED_IDS,
                                                MBPP_SPLITS, MBPP_STOP, load_mbpp,
                                                mbpp_entry_point, mbpp_prompt)
from distill.evaluation.benchmarks.task import Benchmark, BenchmarkSpec, Task, read_benchmark_rows

__all__ = ["APPS", "APPS_CHAT", "APPS_DIFFICULTIES", "APPS_HF_ID", "APPS_SAMPLE", "APPS_STOP",
           "Benchmark", "BenchmarkSpec", "HUMANEVAL_CHAT", "HUMANEVAL_STOP", "HumanEval",
           "JsonlBenchmark", "MBPP", "MBPP_CHAT", "MBPP_HF_IDS", "MBPP_SANITIZED_IDS",
           "MBPP_SPLITS", "MBPP_STOP", "Task", "apps_prompt", "humaneval_path", "load_apps",
           "load_benchmark", "load_humaneval", "load_jsonl_benchmark", "load_mbpp",
           "mbpp_entry_point", "mbpp_prompt", "read_benchmark_rows"]


def load_benchmark(node: Mapping[str, Any]) -> Benchmark:
    """The tasks a ``benchmark`` config node names (``_target_`` + its keys); a misspelt key is a
    :class:`~distill.config.ConfigError` naming it."""
    from distill.evaluation.targets import build

    return build(node, "benchmark", BenchmarkSpec).load()
