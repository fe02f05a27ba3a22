"""distill-compare on hand-written sweep directories (the real multirun is in test_sweeps.py) and on a
stand-in for the W&B API."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from PIL import Image

from distill import compare
from distill.callbacks import StepTimer

HEADER = ["epoch", "step", "train/loss", "val/loss", "val/agreement", "val/kl"]


def make_run(root: Path, name: str, overrides: list[str], val: list[tuple[int, float, float]],
             objective: str = "val/loss", summary: dict | None = None, versions: int = 1) -> Path:
    """A run dir as Hydra + CSVLogger write it: val rows ``(step, loss, agreement)``."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / "config_resolved.yaml").write_text(yaml.safe_dump({"objective": objective}))
    half = len(val) // 2
    chunks = [val[:half], val[half:]] if versions == 2 else [val] if val else []
    for v, chunk in enumerate(chunks):  # a resumed run goes on in csv/version_<n+1>
        path = run / "csv" / f"version_{v}" / "metrics.csv"
        path.parent.mkdir(parents=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(HEADER)
            for step, loss, agree in chunk:
                w.writerow([0, step, 1.0, "", "", ""])
                w.writerow([0, step, "", loss, agree, loss / 10])
    if summary:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    make_run(root, "0_loss.temperature=1,loss.weights.kl=0.5",
             ["debug=tiny", "loss.temperature=1", "loss.weights.kl=0.5"],
             [(9, 5.0, 0.30), (19, 4.0, 0.40)], summary={"summary/gap_closed": 0.2, "student": {"loss": 4.0}})
    make_run(root, "1_loss.temperature=2,loss.weights.kl=0.5",
             ["debug=tiny", "loss.temperature=2", "loss.weights.kl=0.5"],
             [(9, 4.5, 0.35), (19, 3.5, 0.45)], versions=2)
    make_run(root, "2_loss.temperature=1,loss.weights.kl=1.0",
             ["debug=tiny", "loss.temperature=1", "loss.weights.kl=1.0"],
             [(9, 4.8, 0.50), (19, 3.8, 0.60)])
    make_run(root, "10_loss.temperature=2,loss.weights.kl=1.0", ["debug=tiny", "loss.temperature=2",
                                                                 "+loss.weights.kl=1.0"], [])  # failed before logging
    return root


def _png_ok(path: Path) -> bool:
    with Image.open(path) as img:
        img.verify()
    return True


def test_table_ranks_runs_best_first_with_swept_params_and_final_metrics(sweep, tmp_path):
    result = compare.compare(compare.load_local(sweep), tmp_path / "out")
    assert result.params == ["loss.temperature", "loss.weights.kl"], "debug=tiny is the same everywhere"
    assert (result.objective, result.direction) == ("val/loss", "min")
    assert result.columns == ["rank", "run", "loss.temperature", "loss.weights.kl", "val/loss", "val/agreement",
                              "val/kl", "summary/gap_closed"]
    assert [r["run"] for r in result.rows] == ["1", "2", "0", "10"], "best first, the failed run last"
    best = result.rows[0]
    # its rows are split over csv/version_0 and version_1 (a resume): the final values are the later ones
    assert (best["loss.temperature"], best["val/loss"], best["val/agreement"]) == ("2", 3.5, 0.45)
    assert result.rows[2]["summary/gap_closed"] == 0.2
    assert result.rows[3]["loss.weights.kl"] == "1.0" and result.rows[3]["val/loss"] is None

    md = result.files["markdown"].read_text()
    assert "| rank | run | loss.temperature | loss.weights.kl | val/loss |" in md
    assert "| 1 | 1 | 2 | 0.5 | 3.5000 | 0.4500 |" in md and "| 4 | 10 | 2 | 1.0 | - |" in md
    with result.files["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["run"] for r in rows] == ["1", "2", "0", "10"] and rows[3]["val/loss"] == ""
    assert _png_ok(result.files["curves"]) and _png_ok(result.files["objective"])


def test_objective_and_direction(sweep, tmp_path):
    runs = compare.load_local(sweep)
    by_agreement = compare.compare(runs, tmp_path / "a", objective="val/agreement")
    assert by_agreement.direction == "max" and by_agreement.rows[0]["run"] == "2"
    assert compare.compare(runs, tmp_path / "b", direction="max").rows[0]["run"] == "0"
    with pytest.raises(KeyError, match="val/bleu"):
        compare.compare(runs, tmp_path / "c", objective="val/bleu")


def test_cli_writes_next_to_the_sweep_and_names_bad_input(sweep, tmp_path, capsys):
    assert compare.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 1 | 2 | 0.5 | 3.5000 |" in out
    assert sorted(p.name for p in (sweep / "compare").iterdir()) == [
        "comparison.csv", "comparison.md", "objective_vs_params.png", "val_curves.png"]
    assert compare.main([str(sweep), "--objective", "val/nope"]) == 2
    assert "val/nope" in capsys.readouterr().err
    assert compare.main([str(tmp_path / "missing")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert compare.main([str(tmp_path / "empty")]) == 2
    assert "no run directories" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main([])


def test_categorical_parameter_and_single_run(tmp_path):
    root = tmp_path / "s"
    make_run(root, "0_loss=jsd", ["loss=jsd"], [(4, 3.0, 0.5)])
    make_run(root, "1_loss=kd", ["loss=kd"], [(4, 2.0, 0.6)])
    result = compare.compare(compare.load_local(root), tmp_path / "o")
    assert result.params == ["loss"] and [r["loss"] for r in result.rows] == ["kd", "jsd"]
    assert _png_ok(result.files["objective"])
    single = compare.compare(compare.load_local(root / "1_loss=kd"), tmp_path / "one")
    assert single.params == ["loss"] and len(single.rows) == 1


class FakeApi:
    """The slice of ``wandb.Api`` that load_wandb uses."""

    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return self._runs


def _wandb_run(name, overrides, losses):
    history = [{"trainer/global_step": s, "val/loss": v, "_step": i} for i, (s, v) in enumerate(losses)]
    return SimpleNamespace(name=name, config={"overrides": overrides, "objective": "val/loss"},
                           summary={"val/loss": losses[-1][1], "_runtime": 3}, url=f"https://wandb.ai/x/{name}",
                           scan_history=lambda: iter(history))


def test_wandb_group_compares_like_local_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    api = FakeApi([_wandb_run("T=2", ["loss.temperature=2"], [(10, 3.0), (20, 2.0)]),
                   _wandb_run("T=1", ["loss.temperature=1"], [(10, 3.5), (20, 2.5)])])
    runs = compare.load_wandb("team/distill", "sweep-a", api=api)
    assert api.calls == [("team/distill", {"group": "sweep-a"})]
    result = compare.compare(runs, tmp_path / "w")
    ranked = [(r["run"], r["loss.temperature"], r["val/loss"]) for r in result.rows]
    assert ranked == [("T=2", "2", 2.0), ("T=1", "1", 2.5)]
    assert _png_ok(result.files["curves"])

    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(RuntimeError, match="WANDB_MODE=offline"):
        compare.load_wandb("team/distill", "sweep-a", api=api)


def _seed_sweep(tmp_path) -> Path:
    root = tmp_path / "seeds"
    finals = {"kd": [(3.0, 0.5, 0.10), (3.2, 0.6, 0.12), (3.1, 0.55, 0.14)], "jsd": [(3.5, 0.4, 0.20), (3.3, 0.5, 0.22)]}
    n = 0
    for loss, values in finals.items():
        for seed, (final, agree, step_s) in enumerate(values):
            run = make_run(root, f"{n}_loss={loss},seed={seed}", ["debug=tiny", f"loss={loss}", f"seed={seed}"],
                           [(9, final + 1, agree - 0.1), (19, final, agree)],
                           summary={"summary/gap_closed": 1.0 - final / 4})
            with (run / "csv" / "version_0" / "metrics.csv").open("a", newline="") as fh:
                csv.writer(fh).writerow([0, 19, "", "", "", ""])  # a row without time (other metrics)
            (run / "csv" / "version_1").mkdir()  # the timer's rows, as a resumed run would split them
            with (run / "csv" / "version_1" / "metrics.csv").open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["epoch", "step", "time/step_s"])
                w.writerow([0, 19, step_s])
            n += 1
    return root


def test_seeds_are_aggregated_into_mean_std_and_n(tmp_path):
    runs = compare.load_local(_seed_sweep(tmp_path))
    result = compare.compare(runs, tmp_path / "out", relative={"loss": "kd"})
    assert result.params == ["loss"] and [r["loss"] for r in result.rows] == ["kd", "jsd"]
    kd, jsd = result.rows
    assert kd["n"] == 3 and jsd["n"] == 2
    assert kd["val/loss"] == pytest.approx(3.1) and kd["val/loss_std"] == pytest.approx(0.1)
    assert jsd["val/loss"] == pytest.approx(3.4) and jsd["val/loss_std"] == pytest.approx(2 ** 0.5 * 0.1)
    assert jsd["summary/gap_closed"] == pytest.approx(1 - 3.4 / 4)
    assert kd["time/step_s_rel"] == pytest.approx(1.0) and jsd["time/step_s_rel"] == pytest.approx(0.21 / 0.12)
    md = result.files["markdown"].read_text()
    assert "| rank | runs | loss | n | val/loss |" in md
    assert "| 1 | 0,1,2 | kd | 3 | 3.1000 ± 0.1000 |" in md
    with result.files["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["val/loss_std"] and rows[1]["n"] == "2"
    assert _png_ok(result.files["curves"]) and _png_ok(result.files["objective"])
    per_run = compare.compare(runs, tmp_path / "per", per_run=True)
    assert len(per_run.rows) == 5 and "seed" in per_run.params


def test_cli_aggregates_seeds_and_checks_relative_to(tmp_path, capsys):
    root = _seed_sweep(tmp_path)
    assert compare.main([str(root), "--relative-to", "loss=kd"]) == 0
    assert "3.1000 ± 0.1000" in capsys.readouterr().out
    assert compare.main([str(root), "--relative-to", "loss=ce"]) == 2
    assert "no run has that setting" in capsys.readouterr().err
    assert compare.main([str(root), "--relative-to", "loss"]) == 2
    assert compare.main([str(root), "--relative-to", "debug=tiny"]) == 2  # two settings match: ambiguous
    assert "2 settings have" in capsys.readouterr().err


def test_an_evaluation_written_after_training_becomes_columns(tmp_path):
    root = _seed_sweep(tmp_path)
    for i, run in enumerate(sorted(p for p in root.iterdir())):
        (run / compare.load.EVAL_FILE).write_text(json.dumps({"eval/teacher_nll": 1.0 + i, "note": "x", "flag": True}))
    runs = compare.load_local(root)
    assert [r.final["eval/teacher_nll"] for r in runs] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert all("note" not in r.final and "flag" not in r.final for r in runs)
    result = compare.compare(runs, tmp_path / "out", objective="eval/teacher_nll", direction="min")
    assert [r["loss"] for r in result.rows] == ["kd", "jsd"] and result.rows[0]["eval/teacher_nll"] == pytest.approx(2.0)


def test_a_single_seed_group_has_no_std(tmp_path):
    root = tmp_path / "one"
    make_run(root, "0_seed=0", ["loss=kd", "seed=0"], [(4, 3.0, 0.5)])
    make_run(root, "1_seed=1", ["loss=kd", "seed=1"], [(4, 3.2, 0.5)])
    make_run(root, "2_loss=jsd,seed=0", ["loss=jsd", "seed=0"], [(4, 3.6, 0.5)])
    result = compare.compare(compare.load_local(root), tmp_path / "o")
    jsd = [r for r in result.rows if r["loss"] == "jsd"][0]
    assert jsd["n"] == 1 and jsd["val/loss_std"] is None
    assert "| 2 | 2 | jsd | 1 | 3.6000 |" in result.files["markdown"].read_text()


def test_step_timer_logs_the_median_after_warmup():
    logged = []
    module = SimpleNamespace(log=lambda name, value, **kw: logged.append((name, value)))
    timer = StepTimer(skip=1)
    for step in range(4):
        trainer = SimpleNamespace(global_step=step + 1)  # global_step after the step's optimizer update
        timer.on_train_batch_start(trainer, module, None, step)
        timer.on_train_batch_end(trainer, module, None, None, step)
    assert [n for n, _ in logged] == ["time/step_s"] * 3 and all(v >= 0 for _, v in logged)


# ----------------------------------------------------------------------------- several tokenizers
def _tokenizer_run(root: Path, name: str, overrides: list[str], tokenizer: str, loss: float, bpb: float | None) -> Path:
    """A run whose config_resolved.yaml records its student tokenizer, as provenance writes it."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"objective": "val/loss", "student": {"tokenizer": tokenizer, "loaded": {"tokenizer": tokenizer}}}
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    path = run / "csv" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "step", "val/loss", "val/bpb"])
        w.writerow([0, 3, loss, "" if bpb is None else bpb])
    return run


def test_runs_with_different_tokenizers_are_ranked_by_bpb_and_the_header_says_so(tmp_path, caplog):
    root = tmp_path / "tok"
    # the 300-token vocabulary has the lower loss per token (shorter, easier tokens) but more bits per byte
    for seed, (small, large) in enumerate([((2.0, 1.30), (3.0, 1.10)), ((2.1, 1.34), (3.2, 1.14))]):
        _tokenizer_run(root, f"{2 * seed}_v300", ["student.tokenizer_build.vocab_size=300", f"seed={seed}"],
                       "/cache/tokenizers/bpe-300-aaaa", *small)
        _tokenizer_run(root, f"{2 * seed + 1}_v500", ["student.tokenizer_build.vocab_size=500", f"seed={seed}"],
                       "/cache/tokenizers/bpe-500-bbbb", *large)
    runs = compare.load_local(root)
    result = compare.compare(runs, tmp_path / "out")
    assert (result.objective, result.direction) == ("val/bpb", "min")
    assert [r["student.tokenizer_build.vocab_size"] for r in result.rows] == ["500", "300"], "by bpb, not val/loss"
    best = result.rows[0]
    assert best["tokenizer"] == "bpe-500-bbbb" and best["n"] == 2 and best["val/bpb"] == pytest.approx(1.12)
    assert result.columns[:5] == ["rank", "runs", "student.tokenizer_build.vocab_size", "tokenizer", "n"]
    md = result.files["markdown"].read_text()
    assert "objective `val/bpb`" in md and "2 different student tokenizers" in md
    assert "| 1 | 1,3 | 500 | bpe-500-bbbb | 2 | 1.1200 ± 0.0283 | 3.1000 ± 0.1414 |" in md
    # asked for explicitly, val/loss is kept, with the warning in the header
    with caplog.at_level("WARNING"):
        forced = compare.compare(runs, tmp_path / "forced", objective="val/loss")
    assert forced.objective == "val/loss" and forced.rows[0]["student.tokenizer_build.vocab_size"] == "300"
    assert "Warning" in forced.files["markdown"].read_text() and "unlike units" in caplog.text


def test_one_tokenizer_keeps_val_loss_and_old_runs_without_bpb_warn(tmp_path):
    root = tmp_path / "same"
    _tokenizer_run(root, "0_a", ["loss=kd"], "/t/bpe-300", 2.0, 1.3)
    _tokenizer_run(root, "1_b", ["loss=jsd"], "/t/bpe-300", 1.9, 1.35)  # bpb disagrees: val/loss still ranks
    same = compare.compare(compare.load_local(root), tmp_path / "o1")
    assert same.objective == "val/loss" and same.note == "" and [r["loss"] for r in same.rows] == ["jsd", "kd"]
    assert "tokenizer" not in same.columns and "val/bpb" in same.columns
    old = tmp_path / "old"
    _tokenizer_run(old, "0_a", ["x=1"], "/t/bpe-300", 2.0, None)
    _tokenizer_run(old, "1_b", ["x=2"], "/t/bpe-500", 3.0, None)
    result = compare.compare(compare.load_local(old), tmp_path / "o2")
    assert result.objective == "val/loss" and "no run logged `val/bpb`" in result.note


@pytest.mark.slow  # two tiny training runs (tokenizer training, 2 steps, validation): ~40 s on a loaded CPU
def test_a_two_tokenizer_sweep_of_real_runs_is_ranked_by_bpb(tiny_cfg, tmp_path):
    from distill import pipeline

    root = tmp_path / "sweep"
    for n, vocab in enumerate((300, 500)):
        overrides = [f"student.tokenizer_build.vocab_size={vocab}", "teacher=none", "loss=ce", "trainer.max_steps=2"]
        run = root / f"{n}_v{vocab}"
        pipeline.run(tiny_cfg(*overrides, output_dir=run))
        (run / ".hydra").mkdir(parents=True, exist_ok=True)  # what Hydra writes for a -m job
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    runs = compare.load_local(root)
    assert len({compare.load.tokenizer_of(r) for r in runs}) == 2
    assert all(r.final["val/bpb"] > 0 for r in runs)
    result = compare.compare(runs, tmp_path / "out")
    assert result.objective == "val/bpb" and "2 different student tokenizers" in result.note
    bpbs = [r["val/bpb"] for r in result.rows]
    assert bpbs == sorted(bpbs) and {r["tokenizer"][:8] for r in result.rows} == {"bpe-300-", "bpe-500-"}
