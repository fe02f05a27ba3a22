"""The only Hydra glue below the command-line apps: where ``conf/`` is, composing a run config,
and instantiating a ``_target_`` node with an error that names the key.

Every app (``distill-train``, ``distill-eval``, ...) and every script, study and test composes
configs through here, so there is one definition of "the config ``distill-<app> <overrides>``
builds".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

log = logging.getLogger(__name__)

# An absolute path: Hydra resolves a relative config_path as a Python package for installed
# entry points ("Primary config module 'conf' not found").
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


class ConfigError(ValueError):
    """A config that cannot work; the message names the key and the fix.

    The command-line apps print the message alone (no traceback) unless ``HYDRA_FULL_ERROR=1``.
    """


def instantiate(node: DictConfig, what: str, **kwargs):
    """``hydra.utils.instantiate`` that says what it builds and names the config key on failure.

    Hydra wraps the cause of a failed build (and hides a failed import behind "Error locating
    target"); the cause is re-raised with the key that produced it.
    """
    import hydra

    if node is None:
        raise ConfigError(f"`{what}` is missing from the config; pick a preset ({what}=...)")
    target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
    log.info("Instantiating %s <%s>", what, target)
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except Exception as e:
        cause = _root_cause(e)
        missing = _missing_keys(node, what) if isinstance(cause, MissingMandatoryValue) else []
        if missing:  # a `???` the command line did not fill (possibly reached through an interpolation)
            raise ConfigError(f"while building `{what}`: {', '.join(missing)} must be set (it is `???` in the "
                              f"config); give it on the command line, e.g. {missing[0]}=<value>") from cause
        if isinstance(cause, (ImportError, AttributeError)) and "Error locating target" in str(e):
            raise ConfigError(f"while building `{what}`: cannot import <{target}>: "
                              f"{type(cause).__name__}: {cause}. Is the package importable from the "
                              "current directory (or installed)?") from cause
        if isinstance(cause, (ValueError, FileNotFoundError, KeyError, TypeError)):
            try:
                raise type(cause)(f"while building `{what}` (<{target}>): {cause}") from cause
            except TypeError:  # an exception type whose constructor takes other arguments
                raise e from None
        raise


def _missing_keys(node, what: str) -> list[str]:
    """The ``???`` keys under ``node``, as full dotted keys starting with ``what`` (unresolved, so a
    key that only interpolates to a ``???`` is named by the ``???`` itself)."""
    if not isinstance(node, DictConfig):
        return []
    found: list[str] = []

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif value == "???":
            found.append(key)

    walk(OmegaConf.to_container(node, resolve=False), what)
    return sorted(found)


def _root_cause(e: BaseException) -> BaseException:
    seen = set()
    while e.__cause__ is not None and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__
    return e


def load_group(group: str, name: str) -> DictConfig:
    """One config group file as a node, e.g. ``load_group("loss", "ce")`` -> ``conf/loss/ce.yaml``."""
    path = Path(CONF_DIR) / group / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"{group}={name}: no such preset ({path})")
    return OmegaConf.load(path)


def compose_config(config_name: str, overrides: Sequence[str], output_dir: str | Path,
                   root_dir: str | Path | None = None) -> DictConfig:
    """The config ``distill-<cli> <overrides>`` would build, without starting a Hydra app.

    For notebooks, scripts and tests: ``run(compose_config("train", ["loss=ce"], "out/ce"))``.
    Hydra's runtime config is registered (``${hydra:...}`` interpolations and code reading the
    run's choices or overrides work) and then dropped from the returned config, as in a real run.

    Args:
        config_name: a top-level file in ``conf/`` (``train``, ``eval``, ``cache_logits``, ...).
        overrides: command-line style overrides.
        output_dir: becomes ``paths.output_dir`` (the CLI's timestamped run directory).
        root_dir: ``paths.root_dir``; defaults to the current directory, as on the command line.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = str(root_dir if root_dir is not None else Path.cwd())
        del cfg["hydra"]
    return cfg


def prepare_app() -> None:
    """What every console script does first.

    * The current directory is importable, as under ``python -m``: a loss component in
      ``./mylab/losses.py`` can be named ``mylab.losses.MyLoss`` in a config with no PYTHONPATH.
    * Tokenizer worker threads stay off (they deadlock after a fork into data-loader workers).
    """
    import os
    import sys

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


class app_errors:
    """Context manager for a Hydra task function: an expected error (:class:`ConfigError` and its
    subclasses: a bad key, a missing file, a cache that does not match) prints its message alone and
    exits with status 2; ``HYDRA_FULL_ERROR=1`` shows the traceback as usual."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        import os
        import sys

        if exc is None or not isinstance(exc, ConfigError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            return False
        print(f"Error: {exc}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(2)
