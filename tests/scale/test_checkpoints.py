"""LoRA checkpoints hold no frozen base weight, resume exactly, and refuse another base."""

from __future__ import annotations

import pytest
import torch

from distill.checkpointing import BaseMismatchError, frozen_keys
from distill.train import fit, train
from tests.scale.helpers import compose

LORA = "+student.lora={r: 4, alpha: 8, dropout: 0.1, target_modules: [q_proj, v_proj]}"
RUN = ["debug=tiny", LORA, "data.source.max_chars=3000", "data.max_val_examples=4", "export.enabled=false",
       "trainer.val_check_interval=3", "++callbacks.trainable_only._target_=distill.checkpointing.TrainableOnlyCheckpoint",
       "++callbacks.rng._target_=distill.checkpointing.RNGState", "trainer.max_steps=6",
       "callbacks.model_checkpoint.monitor=null", "+callbacks.model_checkpoint.every_n_train_steps=1",
       "callbacks.model_checkpoint.save_top_k=-1"]


def _ckpt(run, name="last.ckpt"):
    return torch.load(run / "checkpoints" / name, weights_only=False)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("lora6")
    fitted = fit(compose(RUN, run))
    return run, fitted.parts.module


def test_a_lora_checkpoint_holds_adapters_and_optimizer_state_but_no_frozen_weight(straight):
    run, module = straight
    ckpt = _ckpt(run)
    frozen = frozen_keys(module)
    assert frozen and any("base_layer" in k for k in frozen) and any("embed_tokens" in k for k in frozen)
    keys = set(ckpt["state_dict"])
    assert not keys & set(frozen), "frozen base weights were saved"
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and trainable <= keys and all("lora_" in k for k in trainable)
    assert ckpt["optimizer_states"][0]["state"], "the optimizer state is kept"
    assert ckpt["frozen_base"]["num_keys"] == len(frozen) and len(ckpt["frozen_base"]["fingerprint"]) == 64
    # the file: adapters + 2 Adam moments, far below the base it would otherwise carry
    base_bytes = sum(module.state_dict()[k].numel() * 4 for k in frozen)
    size = (run / "checkpoints" / "last.ckpt").stat().st_size
    assert size < base_bytes / 2, (size, base_bytes)


def test_a_resumed_lora_run_with_dropout_equals_the_uninterrupted_run(straight, tmp_path):
    """Killed after step 2 (mid-epoch) and resumed from that slim checkpoint: LoRA dropout draws
    from the restored random state, the data continues at batch 3."""
    run, _ = straight
    resumed = tmp_path / "resumed"
    train(compose([*RUN, f"ckpt_path={run / 'checkpoints' / 'step00002.ckpt'}"], resumed))
    a, b = _ckpt(run)["state_dict"], _ckpt(resumed)["state_dict"]
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst


@pytest.mark.slow  # the negative control of the test above
def test_without_the_random_state_dropout_would_differ(straight, tmp_path):
    """The check above can fail: the same resume without RNGState lands elsewhere."""
    run, _ = straight
    resumed = tmp_path / "no_rng"
    train(compose([*[o for o in RUN if "RNGState" not in o], f"ckpt_path={run / 'checkpoints' / 'step00002.ckpt'}"],
                  resumed))
    a, b = _ckpt(run)["state_dict"], _ckpt(resumed)["state_dict"]
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) > 1e-6


def test_resuming_onto_another_base_is_refused(straight, tmp_path):
    run, _ = straight
    # the tiny student is built from its config: another seed is another base
    with pytest.raises(BaseMismatchError, match=r"trained on the frozen base[\s\S]*student.name_or_path"):
        train(compose([*RUN, "seed=1", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"],
                      tmp_path / "other"))
