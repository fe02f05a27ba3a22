"""Evaluation: pass@k on code benchmarks with sandboxed execution, held-out distillation metrics,
and the teacher / base / distilled comparison report (``distill-eval``; docs/evaluation.md).

Modules: ``passk`` (unbiased estimator), ``sandbox`` (+ ``_sandbox_worker``, the process that runs
model-written code), ``benchmarks`` (HumanEval, MBPP, JSONL), ``postprocess``, ``settings``
(the generation contract), ``model_config`` (:class:`EvalModelConfig`, which model to evaluate),
``loading`` (weights, LoRA, run checkpoints), ``sources`` (one module per completion source),
``stdio`` (APPS-style stdin/stdout and call-style test cases), ``runner`` (per-task JSONL, summary, resume), ``heldout``, ``report``,
``cli``.
"""
