"""FSDP on CPU.

What runs here: Lightning's ``ModelParallelStrategy`` with FSDP2 ``fully_shard`` (one unit per
decoder layer, :mod:`distill.sharding`) on 2 gloo CPU ranks; its step equals one process, the
teacher stays whole and out of the optimizer, and a consolidated checkpoint saves and loads.

What cannot run here, and why: Lightning's FSDP1 ``FSDPStrategy`` (``hardware=fsdp``) refuses a
CPU accelerator ("requires a GPU accelerator", pinned below), so that preset is checked by
building its strategy object: the wrap policy must name the student's decoder layer class.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from distill.config import instantiate
from distill.sharding import decoder_layer_class
from tests.scale.helpers import compose
from tests.scale.test_ddp import launch

TOL = 1e-6


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    records = launch("fsdp2", out)
    records[0]["ckpt"] = out / "fsdp2.ckpt"
    return records


def test_fsdp2_step_loss_and_every_gradient_equal_one_process(ranks, single):
    assert ranks[0]["sharded"], "no parameter was sharded"
    for r, ref in zip(ranks, (0, 1)):  # the reference was fed these very batches
        assert all(torch.equal(r["batch"][k], single["rank_batches"][ref][k]) for k in r["batch"])
    assert sum(r["loss"] for r in ranks) == pytest.approx(single["loss"], abs=TOL, rel=0)
    for r in ranks:
        assert r["grads"].keys() == single["grads"].keys()
        worst = max((r["grads"][k] - single["grads"][k]).abs().max().item() for k in single["grads"])
        assert worst <= TOL, f"gradients differ from one process by {worst}"


def test_fsdp2_validation_equals_one_process(ranks, single):
    for k, v in single["val"].items():
        assert ranks[0]["val"][k] == pytest.approx(v, abs=1e-5, rel=1e-5), k


def test_the_teacher_is_not_sharded_nor_in_the_optimizer(ranks, single):
    student_numel = sum(p.numel() for p in single["module"].student.parameters() if p.requires_grad)
    assert all(r["teacher_plain"] for r in ranks), "teacher parameters became DTensors"
    # each rank's optimizer holds its shard of the student: the shards add up to the student alone
    assert sum(r["local_optimizer_numel"] for r in ranks) == student_numel
    assert not any(n.startswith("teacher") for n in ranks[0]["sharded"])


def test_an_fsdp2_checkpoint_saves_whole_and_loads_into_one_process(ranks, single):
    ckpt = torch.load(ranks[0]["ckpt"], weights_only=False)
    after = ranks[0]["after"]
    assert ckpt["state_dict"].keys() == after.keys() and ckpt["optimizer_states"]
    assert all(torch.equal(ckpt["state_dict"][k], after[k]) for k in after)
    module = single["module"]
    module.load_state_dict(ckpt["state_dict"])  # strict: every key of the unsharded module


def test_lightning_fsdp1_refuses_cpu():
    """The documented CPU limit of hardware=fsdp (Lightning's FSDPStrategy)."""
    with pytest.raises((ValueError, MisconfigurationException), match="requires a GPU accelerator"):
        L.Trainer(accelerator="cpu", devices=2, strategy="fsdp", logger=False)


@pytest.mark.parametrize("student,layer", [("tiny", "LlamaDecoderLayer"), ("qwen2.5-coder-0.5b", "Qwen2DecoderLayer")])
def test_the_fsdp_preset_builds_and_wraps_the_decoder_layer(tmp_path, student, layer):
    cfg = compose([f"student={student}", "hardware=fsdp", f"hardware_fsdp.layer={_layer_path(layer)}"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy, "trainer.strategy")
    from lightning.pytorch.strategies import FSDPStrategy

    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert {c.__name__ for c in policy._module_classes} == {layer}
    assert cfg.trainer.precision == "bf16-mixed" and cfg.module.grad_clip is None


def _layer_path(name: str) -> str:
    family = {"LlamaDecoderLayer": "llama", "Qwen2DecoderLayer": "qwen2"}[name]
    return f"transformers.models.{family}.modeling_{family}.{name}"


def test_the_decoder_layer_class_is_found_from_the_model(single):
    assert decoder_layer_class(single["module"].student).__name__ == "LlamaDecoderLayer"
