"""Multi-node without a cluster: the SLURM preset renders the sbatch submitit would submit
(nodes x devices), and Lightning builds its strategy from a simulated SLURM environment."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from distill.config import CONF_DIR, instantiate


class Rendered(Exception):
    """Raised instead of submitting: carries the executor the launcher built."""


def _sbatch(tmp_path, monkeypatch, *overrides: str) -> str:
    import submitit
    from hydra.core.hydra_config import HydraConfig
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["launcher=slurm", f"hydra.sweep.dir={tmp_path}", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)

    def stop(self, *args, **kwargs):
        raise Rendered(self)

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", stop)
    # submitit looks for srun before it builds a SLURM executor; a stand-in that is never run
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    import hydra

    launcher = hydra.utils.instantiate(cfg.hydra.launcher)  # the plugin Hydra builds for `-m launcher=slurm`
    assert type(launcher).__name__ == SlurmLauncher.__name__  # (Hydra loads plugins under its own import)
    launcher.config, launcher.task_function, launcher.hydra_context = cfg, None, None
    with pytest.raises(Rendered) as caught:
        launcher.launch([["loss=kd"]], initial_job_idx=0)
    executor = caught.value.args[0]._executor  # submitit's SlurmExecutor, parameters applied
    return executor._make_submission_file_text("python -m distill.pipeline", "uid")


def test_the_slurm_preset_renders_nodes_times_devices(tmp_path, monkeypatch):
    text = _sbatch(tmp_path, monkeypatch, "hardware=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                   "hydra.launcher.partition=gpu")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --time=240"):
        assert line in text, f"{line!r} missing from\n{text}"
    assert "srun" in text  # one task per GPU: srun starts them, Lightning reads their SLURM ranks


def test_the_default_slurm_job_is_one_task_on_one_gpu(tmp_path, monkeypatch):
    text = _sbatch(tmp_path, monkeypatch, "hardware=gpu")
    assert "#SBATCH --nodes=1" in text and "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gpus-per-node=1" in text


SLURM = {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "distill",
         "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "gpu[07-08]", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
         "SLURM_NODEID": "1"}


def test_lightning_takes_ranks_from_the_slurm_environment(monkeypatch, tmp_path):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from tests.scale.helpers import compose as compose_run

    for k, v in SLURM.items():
        monkeypatch.setenv(k, v)
    # the multi-node DDP run's trainer, on CPU here (the GPU preset's accelerator needs CUDA)
    cfg = compose_run(["hardware=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=4",
                       "+trainer.num_nodes=2", "logger=none"], tmp_path)
    trainer = instantiate(cfg.trainer, "trainer")
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (8, 5, 1, 1)
    assert env.main_address == "gpu07" and trainer.num_nodes == 2
