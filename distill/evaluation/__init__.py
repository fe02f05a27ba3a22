"""Evaluation: pass@k on code benchmarks with sandboxed execution, held-out distillation metrics,
and the teacher / base / distilled comparison report (``distill-eval``; docs/evaluation.md).

Modules: ``passk`` (unbiased estimator), ``benchmarks`` (one module per benchmark: HumanEval, MBPP,
APPS, JSONL; the task types in ``benchmarks.task``), ``targets`` (builds a ``_target_`` node, unknown
keys refused), ``postprocess``, ``settings`` (the generation contract), ``loading`` (weights, LoRA,
run checkpoints), ``sources`` (one module per completion source), model-written code runs in
:mod:`distill.sandbox`,
``stdio`` (APPS-style stdin/stdout and call-style test cases), ``runner`` (per-task JSONL, summary, resume), ``heldout``, ``report``,
``cli``.
"""
