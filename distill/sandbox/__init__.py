"""Run model-written programs in isolated child processes and classify what happened.

Its own package, low in the layer order, because both ``distill-eval`` (pass@k) and the
teacher-data pipeline (checking a teacher's code against its tests) execute untrusted code and
must share one sandbox. Modules: ``config`` (settings, the environment allowlist), ``result``
(:class:`ExecResult`), ``runner`` (workers, :class:`Sandbox`, :func:`run_programs`) and
``_worker`` (the stdlib-only script that forks the samples). ``docs/evaluation.md`` says what
each layer isolates and what it does not.
"""

from distill.sandbox.config import SandboxConfig, scrubbed_env
from distill.sandbox.result import OUTCOMES, ExecResult, SandboxUnavailable
from distill.sandbox.runner import Sandbox, run_programs

__all__ = ["OUTCOMES", "ExecResult", "Sandbox", "SandboxConfig", "SandboxUnavailable",
           "run_programs", "scrubbed_env"]
