"""W&B offline (``WANDB_MODE=offline``, set in conftest): what a run records, clean exits on errors,
rank-zero-only logging. The ``.wandb`` files are read back with :func:`read_offline_run`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import wandb
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from distill.module import DistillationModule
from distill import pipeline
from distill.wandb_utils import SampleGenerations, read_offline_run, run_identity, wandb_logger

# Two steps, validation after each, a short sample table.
TINY_WANDB = ["debug=tiny", "logger=wandb", "trainer.max_steps=2", "trainer.val_check_interval=1",
              "export.enabled=false", "callbacks.wandb_samples.num_prompts=2",
              "callbacks.wandb_samples.max_new_tokens=4"]


@pytest.fixture(autouse=True)
def _no_open_run():
    yield
    if wandb.run is not None:  # never leak a run into the next test
        wandb.finish()


def test_offline_run_records_name_group_tags_config_components_and_summary(tiny_cfg, tmp_path):
    run_dir = tmp_path / "run"
    # what HydraConfig holds inside a `-m` job whose sweep dir is .../my_sweep
    cfg = tiny_cfg(*TINY_WANDB, "loss=progressive", "hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}/my_sweep",
                   output_dir=run_dir)
    metrics = pipeline.run(cfg)
    assert wandb.run is None, "the run is finished when training ends"

    rec = read_offline_run(run_dir / "wandb")
    assert rec["exit_code"] == 0
    assert rec["name"] == run_identity().name
    assert "loss=progressive" in rec["name"] and "logger=" not in rec["name"]
    assert rec["group"] == "my_sweep"
    assert {"loss:progressive", "student:tiny", "teacher:tiny_random"} <= set(rec["tags"])

    config = rec["config"]  # the full resolved config, plus the overrides for distill-compare
    assert config["trainer"]["max_steps"] == 2 and config["paths"]["output_dir"] == str(run_dir)
    assert set(config["loss"]["components"]) == {"ce", "kl", "hidden", "attn"}
    assert config["loss"]["temperature"]["steps"] == 2  # ${trainer.max_steps} resolved
    assert "loss=progressive" in config["overrides"]

    logged = {k for row in rec["history"] for k in row}
    for name in ("ce", "kl", "hidden", "attn"):
        assert f"train/{name}" in logged and f"train/w_{name}" in logged
    assert {"train/temperature", "train/loss", "val/loss", "val/agreement", "val/kl"} <= logged
    temps = [row["train/temperature"] for row in rec["history"] if "train/temperature" in row]
    assert temps == [4.0, 2.5]  # Linear 4 -> 1 over 2 steps

    summary = rec["summary"]
    assert summary["val/loss"] == pytest.approx(metrics["val/loss"], rel=1e-6)
    assert summary["val/agreement"] == pytest.approx(metrics["val/agreement"], rel=1e-6)
    assert summary["train/temperature"] == pytest.approx(2.5)

    # the sample table: 2 prompts x 2 validations, rows accumulating
    table = summary["val/samples"]
    assert table["_type"] == "table-file" and table["nrows"] == 4
    files = list((run_dir / "wandb").rglob("files/" + table["path"]))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["columns"] == ["step", "prompt", "completion", "reference"]
    assert [row[0] for row in data["data"]] == [1, 1, 2, 2]
    assert all(row[1] for row in data["data"]), "non-empty prompts"


def test_a_failing_run_finishes_its_wandb_run_with_an_error_code(tiny_cfg, tmp_path, monkeypatch):
    original = DistillationModule.training_step

    def fail_on_second_step(self, batch, batch_idx):
        if self.trainer.global_step == 1:
            raise RuntimeError("boom at step 1")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DistillationModule, "training_step", fail_on_second_step)
    run_dir = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="boom at step 1"):
        pipeline.run(tiny_cfg(*TINY_WANDB, output_dir=run_dir))
    # finished, so the next run of a sweep in this process gets its own W&B run
    assert wandb.run is None
    rec = read_offline_run(run_dir / "wandb")
    assert rec["exit_code"] == 1
    assert any("train/loss" in row for row in rec["history"]), "what was logged before the error is kept"


def test_only_global_rank_zero_creates_a_run_or_generates(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = wandb_logger(save_dir=str(tmp_path), name="rank1")
    assert type(logger.experiment).__name__.endswith("DummyExperiment")  # what rank > 0 gets
    logger.log_hyperparams({"a": 1})
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.finalize("success")
    assert wandb.run is None and not list(tmp_path.rglob("*.wandb"))

    callback = SampleGenerations()
    monkeypatch.setattr(callback, "generate", lambda *a: pytest.fail("rank 1 must not generate under DDP"))
    trainer = SimpleNamespace(loggers=[logger], sanity_checking=False, is_global_zero=False,
                              strategy=type("DDPStrategy", (), {})())
    callback.on_validation_end(trainer, None)


def test_run_identity_names_a_run_without_overrides_and_outside_hydra(tiny_cfg, tmp_path):
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    tiny_cfg()  # sets HydraConfig like a single (non -m) run with only debug=tiny
    ident = run_identity()
    assert (ident.name, ident.group) == ("debug=tiny", None)
    assert ident.overrides == ["debug=tiny"]
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()
    assert run_identity().name is None  # plain Python use: W&B picks a name
    with pytest.raises(ValueError, match="num_prompts"):
        SampleGenerations(num_prompts=0)
