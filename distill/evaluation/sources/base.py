"""What every completion source is: :class:`CompletionSource`, the class a ``model`` node of
``conf/eval.yaml`` names by ``_target_`` (``conf/eval/model/*.yaml``).

A source declares what the runner needs to know about it as class attributes (``style``,
``fixed_style``, ``wants_raw_prompts``, ``holds_weights``), so that nothing in ``distill-eval``
asks which class a source is. Building one is cheap (keys checked, nothing loaded); :meth:`open`
loads weights, reads files or starts a client.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence, get_args

from distill.config import ConfigError
from distill.evaluation.settings import GenerationResult, GenerationSettings

if TYPE_CHECKING:
    from distill.evaluation.benchmarks.task import Benchmark

Role = Literal["teacher", "base", "distilled", "model"]
ROLES = get_args(Role)


def name_from_path(path: str) -> str:
    """A display name for weights or a file: its folder name, with the run's name in front when
    the folder is a run's ``student`` / ``checkpoints`` / ``last.ckpt``."""
    p = Path(str(path).rstrip("/"))
    if p.name in ("student", "checkpoints", "last.ckpt") and p.parent.name:
        return f"{p.parent.name}-{p.name}"
    return p.name


class CompletionSource:
    """Where the completions of one evaluated model come from.

    Args:
        name: display and folder name; None = derived (the ``models`` key, or the path).
        role: ``teacher``, ``base``, ``distilled`` or ``model`` (the comparison report's rows).

    Class attributes (the declared capabilities):
        kind: label of the source in summaries and reports.
        style: the style of its answers: ``completion``, ``chat`` or ``reference``.
        fixed_style: answers are final completions in ``style``; ``generation.style`` is ignored
            and nothing is post-processed (the reference solutions).
        wants_raw_prompts: ``generate`` also takes ``raw_prompts`` (the tasks' own prompts), to
            match recorded answers by prompt text.
        holds_weights: after :meth:`open`, ``model``, ``tokenizer`` and ``device`` exist, so
            held-out text metrics can be computed.
    """

    kind: str = "source"
    style: str = "completion"
    fixed_style: bool = False
    wants_raw_prompts: bool = False
    holds_weights: bool = False

    def __init__(self, name: str | None = None, role: Role = "model"):
        if role not in ROLES:
            raise ConfigError(f"role must be one of {ROLES}, got {role!r}")
        self.name = name
        self.role = role

    def default_name(self) -> str:
        return self.kind

    def settings(self) -> dict[str, Any]:
        """The constructor arguments that change the answers (recorded in ``run.json``)."""
        return {}

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this source's outputs, for the resume check."""
        cls = type(self)
        return {"target": f"{cls.__module__}.{cls.__qualname__}", "kind": self.kind,
                "name": self.name, **self.settings()}

    def open(self, benchmark: "Benchmark", work_dir: Path) -> None:
        """Load what generation needs (weights, a file, a client). Called once before use."""

    def generate(self, requests: Sequence[tuple[str, str]], settings: GenerationSettings,
                 stop: Sequence[str] | None, style: str = "completion", **kwargs: Any
                 ) -> GenerationResult:
        raise NotImplementedError

    def close(self) -> None:
        """Free what :meth:`open` loaded."""
