"""Test helpers: a component under a given execution strategy (what ``loss.execution`` does)."""

from distill.losses.chunked import Chunked
from distill.losses.fused import Fused


def chunked(cls, chunk_size=None, **kw):
    return cls(**kw, execution=Chunked(chunk_size))


def fused(cls, chunk_size=None, backend="auto", **kw):
    return cls(**kw, execution=Fused(chunk_size, backend))
