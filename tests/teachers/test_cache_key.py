"""Issue 23, points 5-7: a teacher cache is keyed by what decides it, ``teacher=cached`` finds it by
the run's data, ``teacher=cached_auto`` writes it on first use and reuses it, and a cached run's
validation reports the teacher's exact held-out CE with no teacher forward."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distill.config import ConfigError, app_errors, compose_config
from distill.teachers import cached as cached_mod
from distill.teachers.cache import CacheReader

SMALL = ["debug=tiny", "data.source.max_chars=12000", "data.max_val_examples=4", "trainer.max_steps=2"]
REPO = Path(__file__).resolve().parents[2]


def compose(out: Path, overrides: list[str], name: str = "train"):
    return compose_config(name, overrides, out, root_dir=REPO)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> tuple[Path, Path]:
    """Two different tiny HF teacher folders, each with the run's tokenizer (as a real model brings its own)."""
    from distill.build import build_checked

    root = tmp_path_factory.mktemp("teachers")
    tokenizer = build_checked(compose(root / "run", SMALL)).tokenizer
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
        folder = root / f"teacher{seed}"
        LlamaForCausalLM(cfg).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(folder)
    return folders[0], folders[1]


def write_cli(tmp: Path, root: Path, teacher: Path, *extra: str) -> CacheReader:
    from distill.teachers.cache.cli import cache_logits

    cfg = compose(tmp / "cache_run", [*SMALL, "teacher=hf", f"teacher.model.name_or_path={teacher}", "cache.k=8",
                                      "cache.max_steps=2", "cache.progress=false", f"cache.root={root}", *extra],
                  "cache_logits")
    return cache_logits(cfg)


def cached_cfg(tmp: Path, root: Path, *extra: str):
    return compose(tmp / "train_run", [*SMALL, "teacher=cached", "loss=kd_chunked", "teacher.k=8",
                                       f"teacher.root={root}", *extra])


def auto_cfg(tmp: Path, root: Path, teacher: Path, *extra: str):
    return compose(tmp / "train_run", [*SMALL, "teacher=cached_auto", "teacher@teacher.write_with=hf",
                                       f"teacher.write_with.model.name_or_path={teacher}", "teacher.k=8",
                                       f"teacher.root={root}", "teacher.write.progress=false", "loss=kd_chunked",
                                       *extra])


def test_two_hf_teachers_never_share_a_folder_and_teacher_cached_finds_its_own(tmp_path, teachers):
    from distill.build import build_components

    root = tmp_path / "teacher_logits"
    first = write_cli(tmp_path, root, teachers[0])
    second = write_cli(tmp_path, root, teachers[1], "cache.teacher_name=other")
    assert first.path != second.path and first.path.parent == second.path.parent == root
    assert re.fullmatch(r"hf-[0-9a-f]{10}-topk-k8", first.path.name)
    assert re.fullmatch(r"other-[0-9a-f]{10}-topk-k8", second.path.name)
    # the same teacher under the same preset name: another key, never the first teacher's folder
    third = write_cli(tmp_path, root, teachers[1])
    assert third.path.name.startswith("hf-") and third.path != first.path
    # the same command again reuses its folder and writes nothing
    before = {p.name: p.stat().st_mtime_ns for p in first.path.glob("*.safetensors")}
    again = write_cli(tmp_path, root, teachers[0])
    assert again.path == first.path
    assert {p.name: p.stat().st_mtime_ns for p in first.path.glob("*.safetensors")} == before

    # teacher=cached without teacher.path: several caches of this data -> a ConfigError listing them
    with pytest.raises(ConfigError, match=r"3 caches under[\s\S]*teacher.path=<folder>"):
        build_components(cached_cfg(tmp_path, root))
    # teacher.source picks the one written under that name
    parts = build_components(cached_cfg(tmp_path, root, "teacher.source=other"))
    assert parts.teacher.path == second.path
    # teacher.path names one directly
    parts = build_components(cached_cfg(tmp_path, root, f"teacher.path={first.path}"))
    assert parts.teacher.path == first.path


def test_no_matching_cache_is_a_clean_error_naming_the_command(tmp_path, teachers):
    from distill.build import build_components

    empty = tmp_path / "none"
    with pytest.raises(ConfigError, match=r"no teacher cache under[\s\S]*distill-cache-logits teacher=<the teacher "
                                          r"preset>[\s\S]*teacher.path[\s\S]*teacher=cached_auto"):
        build_components(cached_cfg(tmp_path, empty))
    root = tmp_path / "teacher_logits"
    write_cli(tmp_path, root, teachers[0])
    # a cache of other data (another block length) is a near miss, named with why
    with pytest.raises(ConfigError, match=r"no teacher cache under[\s\S]*do not serve it[\s\S]*train seq_len[\s\S]*"
                                          r"distill-cache-logits teacher=hf"):
        build_components(cached_cfg(tmp_path, root, "data.seq_len=16", "teacher.source=hf"))
    # a missing teacher.path: the same clean error; the apps print it alone and exit 2 (no traceback)
    with pytest.raises(SystemExit) as e:
        with app_errors():
            build_components(cached_cfg(tmp_path, root, f"teacher.path={tmp_path / 'missing'}"))
    assert e.value.code == 2


def test_cached_auto_writes_once_then_reuses_and_matches_the_cli_folder(tmp_path, teachers, monkeypatch):
    from distill.build import build_components
    from distill.teachers.hf import HFTeacher

    root = tmp_path / "teacher_logits"
    writes, loads = [], []
    real_write, real_load = cached_mod.write_cache, HFTeacher.load
    monkeypatch.setattr(cached_mod, "write_cache", lambda *a, **kw: writes.append(1) or real_write(*a, **kw))
    monkeypatch.setattr(HFTeacher, "load", lambda self, *a, **kw: loads.append(1) or real_load(self, *a, **kw))

    parts = build_components(auto_cfg(tmp_path, root, teachers[0]))
    assert len(writes) == 1 and len(loads) == 1
    path = parts.teacher.path
    manifest = json.loads((path / "manifest.json").read_text())
    assert all(manifest["splits"][s]["complete"] for s in ("train", "val"))
    assert manifest["next_logprob"] and manifest["teacher"]["choice"] == "hf"
    stamp = (path / "manifest.json").stat().st_mtime_ns

    parts = build_components(auto_cfg(tmp_path, root, teachers[0]))  # the second run: no teacher forward
    assert parts.teacher.path == path and len(writes) == 1 and len(loads) == 1
    assert (path / "manifest.json").stat().st_mtime_ns == stamp
    # the folder distill-cache-logits teacher=hf writes for the same teacher and data is the same one
    # (and, with the same shard size, it finds it finished)
    assert write_cli(tmp_path, root, teachers[0], "cache.shard_size=256").path == path
    # another teacher: its own folder, written on its first use
    other = build_components(auto_cfg(tmp_path, root, teachers[1]))
    assert other.teacher.path != path and len(writes) == 2


def test_cached_validation_gives_the_teachers_exact_heldout_ce(tmp_path, teachers):
    from distill import metrics as M
    from distill.build import build_components
    from distill.losses.functional import cross_entropy, next_token_targets

    parts = build_components(auto_cfg(tmp_path, tmp_path / "teacher_logits", teachers[0]))
    dm = parts.datamodule
    model = LlamaForCausalLM.from_pretrained(teachers[0]).eval()
    total_cached, total_online = {}, {}
    for batch in dm.val_dataloader():
        targets = next_token_targets(batch["labels"])
        out = parts.teacher.heldout_output(batch)
        assert out.sampled_logprobs is not None
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mask = targets != -100
        online = -cross_entropy(logits, targets)
        assert torch.allclose(out.sampled_logprobs[mask], online[mask], atol=1e-4)
        student = torch.randn_like(logits)
        M.accumulate(total_cached, M.heldout_sums(student, out, targets))
        M.accumulate(total_online, M.heldout_metrics(student, logits, targets))
    cached, online = M.finalize(total_cached), M.finalize(total_online)
    assert math.isclose(cached["teacher_loss"], online["teacher_loss"], rel_tol=1e-5)
    assert cached["agreement"] == pytest.approx(online["agreement"])


def test_an_older_cache_gives_teacher_ce_only_from_targets_in_its_top_k(tmp_path, teachers):
    """A cache written before next_logprob was stored: the target's log-prob comes from the top-k
    support where it is there; a batch with a target outside gives no teacher CE (never a partial mean)."""
    from distill.build import build_components
    from distill.losses.functional import next_token_targets

    parts = build_components(auto_cfg(tmp_path, tmp_path / "teacher_logits", teachers[0]))
    batch = next(iter(parts.datamodule.val_dataloader()))
    batch.pop("teacher_next_logprob")
    targets = next_token_targets(batch["labels"])
    mask = targets != -100
    k = batch["teacher_topk_ids"].shape[-1]
    inside = (targets.clamp(min=0).unsqueeze(-1) + torch.arange(k)) % 2048  # every target in slot 0
    out = parts.teacher.heldout_output(dict(batch, teacher_topk_ids=inside))
    assert out.sampled_logprobs is not None
    assert torch.equal(out.sampled_logprobs[mask], out.topk_logprobs[..., 0][mask])
    b, t = mask.nonzero()[0].tolist()
    outside = inside.clone()
    outside[b, t] = (targets[b, t] + 1 + torch.arange(k)) % 2048
    assert parts.teacher.heldout_output(dict(batch, teacher_topk_ids=outside)).sampled_logprobs is None


def test_a_cached_run_keeps_its_teacher_row_and_baseline_without_a_teacher_forward(tmp_path, teachers, monkeypatch):
    from distill import pipeline
    from distill.teachers.hf import HFTeacher

    cfg = auto_cfg(tmp_path, tmp_path / "teacher_logits", teachers[0], "summary.enabled=true",
                   "summary.baseline=true")
    calls = []
    real_call = HFTeacher.__call__
    monkeypatch.setattr(HFTeacher, "__call__", lambda self, *a, **kw: calls.append(1) or real_call(self, *a, **kw))
    metrics = pipeline.run(cfg)
    assert "val/teacher_loss" in metrics and math.isfinite(metrics["val/teacher_loss"])
    assert "summary/gap_closed" in metrics or any(k.startswith("summary/") for k in metrics)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["teacher"] is not None and summary["baseline"] is not None
    assert not calls  # the cache was written by a teacher pass, not by calling the teacher per batch
