"""Preemption-safe resume: a run killed at any step and resumed equals the uninterrupted run.

The tiny run has 3 optimizer steps per epoch, so the kill points cover the middle of the first
epoch, its last batch (the resumed run must start the next epoch with the next shuffle) and the
middle of the second epoch. Float32 on CPU: losses and final weights must agree to 1e-6.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
import torch

from distill.data.resumable import ResumableLoader
from distill.train import train
from tests.scale.helpers import compose as compose_cfg

STEPS = 8
RUN = ["debug=tiny", "data.source.max_chars=3000", "data.batch_size=12", "module.micro_batch_size=4",
       "data.max_val_examples=4", f"trainer.max_steps={STEPS}", "trainer.val_check_interval=4",
       "export.enabled=false", "logger=csv", "callbacks.model_checkpoint.monitor=null",
       "+callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1",
       "callbacks.model_checkpoint.save_last=false"]


def _losses(run: Path) -> dict[int, float]:
    rows = {}
    for path in sorted(run.rglob("metrics.csv")):
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                rows[int(row["step"])] = float(row["train/loss"])
    return rows


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / f"step{STEPS:05d}.ckpt", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    train(compose_cfg(RUN, run))
    return run


def test_the_tiny_run_has_three_steps_per_epoch(straight):
    cfg = compose_cfg(RUN, straight)
    from distill.build import build_components

    dm = build_components(cfg).datamodule
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader) and len(loader) == 3


@pytest.mark.parametrize("kill", [2, 3, pytest.param(4, marks=pytest.mark.slow)])
def test_killed_and_resumed_run_equals_the_uninterrupted_run(straight, tmp_path, kill):
    ckpt = straight / "checkpoints" / f"step{kill:05d}.ckpt"
    assert ckpt.exists()
    resumed = tmp_path / f"resumed{kill}"
    train(compose_cfg([*RUN, f"ckpt_path={ckpt}"], resumed))
    a, b = _losses(straight), _losses(resumed)
    assert sorted(b) == list(range(kill, STEPS)), "the resumed run runs the remaining steps only"
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6, rel=0), f"step {step}: loss differs after resuming"
    wa, wb = _weights(straight), _weights(resumed)
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst <= 1e-6, f"final weights differ by {worst}"


def test_a_checkpoint_from_other_data_settings_is_refused():
    loader = ResumableLoader(list(range(10)), batch_size=2, drop_last=True, generator=torch.Generator().manual_seed(0))
    state = loader.state_dict()
    other = ResumableLoader(list(range(10)), batch_size=5, drop_last=True, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="data.batch_size"):
        other.load_state_dict(state)


def _epochs(loader, batches: int, kills: list[int]) -> list:
    """What a Lightning run sees: ``len(loader)`` batches per epoch (the iterator is never run dry),
    a fresh loader restored from ``state_dict()`` at each kill point."""
    got, kills = [], list(kills)
    while len(got) < batches:
        for batch in loader:
            got.append(batch)
            if kills and len(got) == kills[0]:
                kills.pop(0)
                state = loader.state_dict()
                loader = loader.__class__.fresh()
                loader.load_state_dict(state)
                break
            if len(got) % len(loader) == 0 or len(got) >= batches:
                break
    return got


def test_the_loader_serves_the_plain_dataloader_order_and_resumes_anywhere():
    from torch.utils.data import DataLoader

    def make(cls):
        return cls(list(range(23)), batch_size=4, shuffle=True, drop_last=True,
                   generator=torch.Generator().manual_seed(0), collate_fn=list)

    class Fresh(ResumableLoader):
        @staticmethod
        def fresh():
            return make(Fresh)

    plain = make(DataLoader)
    expected = [b for _ in range(4) for b in itertools.islice(plain, len(plain))]
    assert [b for b in make(ResumableLoader)] == [b for b in make(DataLoader)], "a fresh run's order is unchanged"
    for first in range(1, 19):
        for second in (None, 1, 5):
            kills = [first] + ([first + second] if second else [])
            assert _epochs(make(Fresh), 19, kills) == expected[:19], kills


def test_train_order_is_the_order_a_run_serves_across_epochs(straight):
    """``train_order`` (used to pick the examples a partial teacher cache holds) follows the
    loader epoch after epoch as Lightning iterates it: len(loader) batches, then a new epoch."""
    from distill.build import build_components

    dm = build_components(compose_cfg(RUN, straight)).datamodule
    order = dm.train_order(7)
    loader = dm._train_loader(range(len(dm.train_set)), list)
    served = [[int(i) for i in b] for _ in range(3) for b in itertools.islice(loader, len(loader))]
    assert order == served[:7] and len(loader) == 3
