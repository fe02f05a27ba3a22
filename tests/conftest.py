"""Shared fixtures: compose the real configs with Hydra's compose API, on tiny models, on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from distill.train import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
MBPP = REPO.parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session", autouse=True)
def distill_cache(tmp_path_factory) -> Path:
    """One cache (tokenizer, tokenized data) per test session, never the user's ~/.cache."""
    path = Path(os.environ.get("DISTILL_TEST_CACHE") or tmp_path_factory.mktemp("distill-cache"))
    os.environ["DISTILL_CACHE"] = str(path)
    return path


def compose_cfg(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the CLI would, with ``paths.output_dir`` set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = str(REPO)
        del cfg["hydra"]
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
    """``tiny_cfg(*overrides)``: the debug=tiny run config writing into a fresh temp dir."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_cfg(["debug=tiny", *overrides], output_dir or tmp_path / "run")

    return make
