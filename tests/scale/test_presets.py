"""The GPU-only hardware presets compose, and their strategies build where the packages allow."""

from __future__ import annotations

import importlib.util

import pytest

from distill.config import instantiate
from tests.scale.helpers import compose


@pytest.mark.parametrize("stage", [2, 3])
def test_the_deepspeed_preset_composes_and_builds_where_deepspeed_is_installed(tmp_path, stage):
    cfg = compose(["hardware=deepspeed", f"trainer.strategy.stage={stage}"], tmp_path)
    assert cfg.trainer.strategy._target_ == "lightning.pytorch.strategies.DeepSpeedStrategy"
    assert cfg.trainer.strategy.stage == stage and cfg.module.grad_clip is None
    if importlib.util.find_spec("deepspeed") is None:
        # Lightning needs the package to build the strategy at all: pinned so the preset's
        # comment ("pip install deepspeed") stays true
        with pytest.raises(Exception, match="(?i)deepspeed"):
            instantiate(cfg.trainer.strategy, "trainer.strategy")
        pytest.skip("deepspeed is not installed here (it builds CUDA ops; GPU machines only)")
    strategy = instantiate(cfg.trainer.strategy, "trainer.strategy")
    assert strategy.config["zero_optimization"]["stage"] == stage


def test_the_cpu_ddp_preset_is_what_the_ddp_test_runs(tmp_path):
    cfg = compose(["hardware=ddp_cpu"], tmp_path)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy) == ("cpu", 2, "ddp")
