"""Typed settings from a config mapping: the one ``from_mapping`` behind every settings dataclass.

Hydra hands over plain mappings; a settings dataclass (generation, held-out, sandbox) is built
from one here so that a misspelt key fails the same way everywhere, naming the key, its section
and the keys that exist, instead of being silently ignored or failing as a bare ``TypeError``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

from distill.config import ConfigError

T = TypeVar("T")


def from_mapping(cls: type[T], cfg: Mapping[str, Any] | None, section: str) -> T:
    """``cls(**cfg)`` for a dataclass ``cls``; an unknown key is a :class:`ConfigError` (a
    ``ValueError``) naming ``section``. Values are passed as given: the caller converts lists or
    nested mappings first, and ``cls.__post_init__`` checks ranges."""
    cfg = dict(cfg or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**cfg)
