"""``loss.execution``: the name of each execution strategy, and building one from a config value.

``plain`` (:class:`~distill.losses.strategy.Plain`), ``chunked``
(:class:`~distill.losses.chunked.Chunked`) and ``fused`` (:class:`~distill.losses.fused.Fused`).
Sparse execution is not a choice: a divergence compares bucket distributions whenever the teacher's
output is a top-k support (:mod:`distill.losses.targets`), under any of the three.
"""

from __future__ import annotations

from typing import Literal

from distill.losses.chunked import Chunked
from distill.losses.fused import Fused
from distill.losses.strategy import Execution, Plain

ExecutionName = Literal["plain", "chunked", "fused"]
STRATEGIES: dict[str, type[Execution]] = {cls.name: cls for cls in (Plain, Chunked, Fused)}


def make_execution(execution: ExecutionName | Execution | None, chunk_size: int | None = None,
                   backend: str = "auto", owner: str = "loss.execution") -> Execution:
    """The strategy ``execution`` names (an :class:`Execution` passes through; None is plain).

    ``chunk_size`` applies to chunked and fused, ``backend`` to fused; giving either to a strategy
    that ignores it is refused, so a config cannot silently carry a setting that does nothing.
    """
    if execution is None:
        execution = "plain"
    if isinstance(execution, Execution):
        return execution
    cls = STRATEGIES.get(str(execution))
    if cls is None:
        raise ValueError(f"{owner}: unknown value {execution!r}; use one of {sorted(STRATEGIES)}")
    return cls.build(chunk_size, backend, owner)
