"""Sweeps through the real CLI: a 2 x 2 multirun compared with distill-compare, an Optuna search,
and the launcher / search presets composing (SLURM cannot run here)."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from distill import compare
from distill.runs import read_metrics
from distill.config import CONF_DIR

# A few optimizer steps on the tiny models, one validation at the end.
TINY = ["debug=tiny", "trainer.max_steps=2", "trainer.val_check_interval=2", "export.enabled=false"]


def _script(name: str) -> list[str]:
    """The installed console script next to this interpreter (what a user runs)."""
    exe = Path(sys.executable).parent / name
    module = {"distill-train": "distill.pipeline", "distill-compare": "distill.compare"}[name]
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


def _run(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HYDRA_FULL_ERROR="1")
    proc = subprocess.run(_script(name) + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _final(run_dir: Path, key: str) -> float:
    return [r[key] for r in read_metrics(run_dir) if key in r][-1]


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_multirun_2x2_writes_one_run_dir_per_point_and_compares(tmp_path):
    sweep = tmp_path / "sweep"
    _run("distill-train", ["-m", *TINY, "loss=kd,jsd", "loss.temperature=1,2", f"hydra.sweep.dir={sweep}"], tmp_path)

    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name != "compare")
    assert len(runs) == 4, [p.name for p in runs]
    seen = set()
    for run in runs:
        # subdir: <job number>_<swept keys>, so the directory says what the run is, and only that
        m = re.fullmatch(r"(\d)_(.*)", run.name)
        assert m and {kv.split("=")[0] for kv in m.group(2).split(",")} == {"loss", "loss.temperature"}, run.name
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()))
        cfg = yaml.safe_load((run / "config_resolved.yaml").read_text())  # every ${...} filled in
        assert cfg["loss"]["temperature"] == float(overrides["loss.temperature"])
        assert set(cfg["loss"]["components"]) == ({"kl", "ce"} if overrides["loss"] == "kd" else {"jsd"})
        assert cfg["paths"]["output_dir"] == str(run)
        seen.add((overrides["loss"], overrides["loss.temperature"]))
        assert _final(run, "val/loss") > 0 and _final(run, "val/agreement") >= 0
        assert (run / "checkpoints" / "last.ckpt").is_file()
    assert seen == {("kd", "1"), ("kd", "2"), ("jsd", "1"), ("jsd", "2")}

    out = _run("distill-compare", [str(sweep)], tmp_path)
    assert "| rank | run | loss | loss.temperature | val/loss |" in out.stdout
    table = sweep / "compare"
    with (table / "comparison.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    assert list(rows[0])[:5] == ["rank", "run", "loss", "loss.temperature", "val/loss"]
    assert {"val/agreement", "val/kl"} <= set(rows[0])
    losses = [float(r["val/loss"]) for r in rows]
    assert losses == sorted(losses), "best (lowest val/loss) first"
    for r in rows:  # each row is the run it names
        run = next(p for p in runs if p.name.startswith(f"{r['run']}_"))
        assert f"loss={r['loss']}" in run.name and f"loss.temperature={r['loss.temperature']}" in run.name
        assert float(r["val/loss"]) == pytest.approx(_final(run, "val/loss"), abs=1e-4)
    md = (table / "comparison.md").read_text().splitlines()
    assert sum(1 for line in md if re.match(r"\| \d \|", line)) == 4
    for png in ("val_curves.png", "objective_vs_params.png"):
        _assert_png(table / png)


def test_optuna_search_optimises_the_metric_the_app_returns(tmp_path):
    sweep = tmp_path / "optuna"
    # val/kl, not the default val/loss: the sweeper must see whatever `objective` names
    _run("distill-train", ["-m", "hparams_search=optuna", *TINY, "objective=val/kl", "hydra.sweeper.n_trials=3",
                           "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}"], tmp_path)
    trials = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(trials) == 3
    kls = {p: _final(p, "val/kl") for p in trials}
    assert len({round(v, 9) for v in kls.values()}) == 3, "three different trials"
    best_dir = min(kls, key=kls.get)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(kls[best_dir], rel=1e-6)
    best_overrides = dict(o.split("=", 1) for o in yaml.safe_load((best_dir / ".hydra" / "overrides.yaml").read_text()))
    for key, value in result["best_params"].items():
        assert float(best_overrides[key]) == pytest.approx(value)
    assert set(result["best_params"]) == {"loss.temperature", "loss.weights.kl", "loss.weights.ce"}

    # distill-compare reads the objective and direction back from the runs and agrees
    table = compare.compare(compare.load_local(sweep), tmp_path / "cmp")
    assert (table.objective, table.direction) == ("val/kl", "min")
    assert table.rows[0]["val/kl"] == pytest.approx(result["best_value"], rel=1e-6)
    assert set(table.params) == {"loss.temperature", "loss.weights.kl", "loss.weights.ce"}


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_search_and_launcher_presets_compose():
    cfg = _compose(["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert (cfg.objective, sweeper.direction) == ("val/loss", "minimize")
    assert set(sweeper.params) == {"loss.temperature", "loss.weights.kl", "loss.weights.ce"}
    cfg = _compose(["hparams_search=optuna_agreement"])
    assert (cfg.objective, cfg.hydra.sweeper.direction) == ("val/agreement", "maximize")

    cfg = _compose(["launcher=joblib"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
    assert cfg.threads == 1, "parallel CPU runs must not each take every core"

    cfg = _compose(["launcher=slurm", "hydra.launcher.partition=gpu", "hardware=ddp", "trainer.devices=4",
                    "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 4, 4)
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"
    with pytest.raises(Exception, match="partiton"):  # the plugin's schema names a misspelt key
        _compose(["launcher=slurm", "hydra.launcher.partiton=gpu"])


def test_sweep_dirs_are_named_by_the_overrides_that_matter():
    cfg = _compose(["loss=jsd", "loss.temperature=2", "logger=none", "threads=2", "summary.baseline=false"])
    assert cfg.hydra.job.override_dirname == "loss.temperature=2,loss=jsd"
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}_${distill.run_name:}"
