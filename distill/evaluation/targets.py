"""Build an evaluation object from its config node: a benchmark or a completion source, named by
``_target_`` like everything else a user picks (``conf/eval/benchmark/*.yaml``,
``conf/eval/model/*.yaml``).

Hydra's own instantiate reports a misspelt key as a ``TypeError`` about ``__init__``; here every key
is checked against the target's signature first, so ``benchmark.limt`` fails as a
:class:`~distill.config.ConfigError` that names the key and lists the ones the class takes.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, TypeVar

from omegaconf import DictConfig, OmegaConf

from distill.config import ConfigError, instantiate

T = TypeVar("T")
HYDRA_KEYS = {"_target_", "_recursive_", "_convert_", "_partial_", "_args_"}


def accepted_keys(cls: type) -> set[str] | None:
    """The keyword arguments ``cls`` takes; None when it takes ``**kwargs`` (anything goes)."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def build(node: Mapping[str, Any] | DictConfig | None, where: str, base: type[T]) -> T:
    """Instantiate ``node`` (a mapping with ``_target_``) as a subclass of ``base``.

    Args:
        node: the config node, e.g. ``cfg.benchmark``.
        where: its key, for messages (``benchmark``, ``models.teacher``).
        base: the class the target must derive from (:class:`BenchmarkSpec`, ...).
    """
    from hydra.utils import get_class

    if node is None:
        raise ConfigError(f"`{where}` is missing from the config; pick a preset")
    if not isinstance(node, DictConfig):
        node = OmegaConf.create(dict(node))
    target = node.get("_target_")
    if not target:
        raise ConfigError(f"{where}: no _target_; name the class to build "
                          f"({where}._target_=<module.Class>) or pick a preset")
    try:
        cls = get_class(str(target))
    except Exception as exc:  # an import error inside the module, or no such class
        raise ConfigError(f"{where}._target_: cannot import <{target}>: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{where}._target_: <{target}> is not a {base.__name__}")
    known = accepted_keys(cls)
    if known is not None:
        unknown = sorted(str(k) for k in node.keys() if k not in HYDRA_KEYS and k not in known)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key for <{target}> "
                              f"(unknown: {unknown}; known keys: {sorted(known)})")
    return instantiate(node, where)
