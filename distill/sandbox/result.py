"""What one sandboxed program did: :class:`ExecResult`, the outcome names, and the error for a
required isolation layer that is missing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

OUTCOMES = ("passed", "failed", "error", "timeout", "syntax_error", "crashed")


@dataclass
class ExecResult:
    """What one program did. ``passed`` is the only outcome that counts towards pass@k."""

    outcome: str
    error_type: str | None = None
    message: str = ""
    traceback: str = ""
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    output_truncated: bool = False
    duration: float = 0.0
    exit_code: int | None = None
    signal: int | None = None
    strays_killed: int = 0

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExecResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SandboxUnavailable(RuntimeError):
    """A required isolation layer (``true`` in the config) could not be set up here."""
