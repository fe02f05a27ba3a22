"""DDP on CPU: 2 gloo ranks through Lightning equal one process fed the same global batch.

The module does its own rank arithmetic (``backward(loss * world)`` to undo DDP's gradient
average, ``no_sync`` on all but the last micro-batch, the step's token count all-reduced, the
validation totals summed over ranks, each held-out example counted once). These tests check each
of those against a single process: ranks hold different numbers of unmasked tokens, micro-batching
is on, and the held-out count (7) is not divisible by the world size.
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from tests.scale.ddp_worker import SEQ, STEP, Capture, VariableLengths
from tests.scale.helpers import compose, free_port, run_script

TOL = 1e-6


def _pad(batches: list[dict], pad_id: int) -> dict:
    """Concatenate per-rank batches into one, right-padding to the longest (mask 0, label -100)."""
    length = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
    return {k: torch.cat([torch.nn.functional.pad(b[k], (0, length - b[k].shape[1]), value=fill[k])
                          for b in batches]) for k in batches[0]}


def _same(batch):
    return batch


class OneBatch(L.LightningDataModule):
    """Serves one fixed training batch and the ranks' validation data."""

    def __init__(self, batch: dict, val):
        super().__init__()
        self.batch, self.val = batch, val

    def train_dataloader(self):
        return torch.utils.data.DataLoader([self.batch], batch_size=None, collate_fn=_same)

    def val_dataloader(self):
        return self.val.val_dataloader()


def launch(mode: str, out) -> list[dict]:
    """Run the worker on 2 gloo ranks; each rank's record."""
    run_script(["tests/scale/ddp_worker.py", mode, str(out), "2"], timeout=240,
               env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def one_process(ranks: list[dict], out) -> dict:
    """The same step in one process: the ranks' batches concatenated, all validation data."""
    from distill.build import build_components
    from distill.data.datamodule import DistillDataModule

    cfg = compose(STEP, out)
    parts = build_components(cfg)
    module = parts.module
    module.configure_model()
    module.load_state_dict(ranks[0]["init"])
    module.teacher.model.load_state_dict(ranks[0]["teacher"])
    batch = _pad([r["batch"] for r in ranks], parts.tokenizer.pad_token_id)
    val = DistillDataModule(VariableLengths(), seq_len=SEQ, batch_size=4, val_batch_size=2, max_val_examples=None)
    val.connect(parts.tokenizer).setup("fit")
    capture = Capture()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, val_check_interval=1, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[capture])
    one = OneBatch(batch, val)
    one.tokenizer = parts.tokenizer  # validation reads it for val/bpb, as from the DistillDataModule on the ranks
    trainer.fit(module, datamodule=one)
    return {**capture.record, "batch": batch, "module": module, "rank_batches": [r["batch"] for r in ranks],
            "val": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}}


def test_ranks_hold_different_token_counts_and_micro_batch(ddp_ranks):
    ranks = ddp_ranks
    tokens = [int((r["batch"]["labels"][:, 1:] != -100).sum()) for r in ranks]
    assert ranks[0]["world"] == 2 and tokens[0] != tokens[1], tokens
    assert all(r["batch"]["input_ids"].shape[0] == 4 for r in ranks)  # micro_batch_size=2: 2 micro-batches each
    assert not torch.equal(ranks[0]["batch"]["input_ids"][:, :3], ranks[1]["batch"]["input_ids"][:, :3])


def test_ddp_step_loss_and_every_gradient_equal_one_process(ddp_ranks, single):
    ranks = ddp_ranks
    # each rank's loss is its share (local sum / global tokens): the shares add up to the step loss
    assert sum(r["loss"] for r in ranks) == pytest.approx(single["loss"], abs=TOL, rel=0)
    for r in ranks:  # DDP leaves the same (all-reduced) gradient on every rank
        assert r["grads"].keys() == single["grads"].keys() and r["grads"]
        worst = max((r["grads"][k] - single["grads"][k]).abs().max().item() for k in single["grads"])
        assert worst <= TOL, f"gradients differ from one process by {worst}"


def _examples(batches: list[dict], counted: bool) -> list[tuple[int, ...]]:
    """The rows of ``batches`` (their real tokens) whose labels are (``counted``) or are not all masked."""
    rows = []
    for b in batches:
        for ids, mask, labels in zip(b["input_ids"], b["attention_mask"], b["labels"]):
            if bool((labels != -100).any()) == counted:
                rows.append(tuple(ids[mask.bool()].tolist()))
    return rows


def test_validation_with_an_odd_held_out_count_counts_each_example_once(ddp_ranks, single):
    ranks = ddp_ranks
    # 7 held-out examples on 2 ranks: 4 and 3, padded to 4 by a masked repeat so both ranks run
    # alike (Lightning's own sampler repeats an example, which then counts twice)
    sizes = [sum(b["input_ids"].shape[0] for b in r["val_batches"]) for r in ranks]
    assert sizes == [4, 4], "each rank validates its own half of the held-out data"
    counted = [row for r in ranks for row in _examples(r["val_batches"], counted=True)]
    padding = [row for r in ranks for row in _examples(r["val_batches"], counted=False)]
    everything = _examples(single["val_batches"], counted=True)
    assert len(everything) == 7 and sorted(counted) == sorted(everything), "every example counted once"
    assert len(padding) == 1 and padding[0] in everything
    val0, val1 = ranks[0]["val"], ranks[1]["val"]
    assert val0.keys() == single["val"].keys() and "val/loss" in val0 and "val/kl" in val0
    for k, v in single["val"].items():
        assert val0[k] == pytest.approx(v, abs=TOL, rel=TOL), k
        assert val1[k] == pytest.approx(v, abs=TOL, rel=TOL), k


@pytest.mark.slow  # a full distill-train pipeline on 2 ranks: about a minute
def test_only_rank_zero_writes_exports_summaries_and_baselines(tmp_path):
    run_script(["tests/scale/ddp_worker.py", "pipeline", str(tmp_path), "2"], timeout=240,
               env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    written = sorted(p.name for p in tmp_path.glob("*.rank*") if not p.name.startswith("metrics"))
    assert written and all(name.endswith(".rank0") for name in written), written
    assert {"export_student.rank0", "run_baseline.rank0", "write_summary.rank0"} <= set(written)
    assert (tmp_path / "run" / "student" / "config.json").exists()
    metrics = [json.loads((tmp_path / f"metrics.rank{r}.json").read_text()) for r in (0, 1)]
    assert metrics[0]["val/loss"] == pytest.approx(metrics[1]["val/loss"], rel=1e-6)
