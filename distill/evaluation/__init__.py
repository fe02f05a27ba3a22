"""Evaluation: pass@k on code benchmarks with sandboxed execution, held-out distillation metrics,
and the teacher / base / distilled comparison report (``distill-eval``; docs/evaluation.md).

Modules: ``passk`` (unbiased estimator), ``sandbox`` (+ ``_sandbox_worker``, the process that runs
model-written code), ``benchmarks`` (HumanEval, MBPP, JSONL), ``postprocess``, ``generation``
(completion sources), ``runner`` (per-task JSONL, summary, resume), ``heldout``, ``report``,
``cli``.
"""
