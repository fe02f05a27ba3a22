"""Offline teacher cache: exact round trip, resuming, mismatch errors, and training from it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distill.losses import functional as LF
from distill.losses import sparse as SP
from distill.teachers import cache as C
from distill.teachers.cached import CachedRows, CachedTeacher, renormalize
from distill.types import TeacherOutput

V = 64
TEACHER = {"choice": "test", "name_or_path": None, "from_scratch": True, "config_sha256": "c", "dtype": "float32",
           "weights": {"kind": "state_dict", "sha256": "w"},
           "info": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "vocab_size": V}}
TOKENIZER = {"name_or_path": "tok", "size": V, "vocab_sha256": "v"}


def tiny_model(dtype=torch.float32, vocab_size=V) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def examples(n=10, seed=0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 12 if i % 3 else 5 + i % 7  # mostly full blocks, some shorter (padding in batches)
        ids = torch.randint(0, V, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": ids})
    return out


LEGACY16 = C.Encoding.legacy("float16")


def writer(path, mode="topk", k=8, **kw) -> C.CacheWriter:
    kw.setdefault("shard_size", 3)
    return C.CacheWriter(path, mode=mode, k=k, vocab_size=V, teacher=TEACHER, tokenizer=TOKENIZER, **kw)


def batch_of(rows: C.SplitReader, ex: list[dict], indices) -> dict:
    """The batch the DataModule would serve: examples through the cache's hook, then collated."""
    from distill.data.datamodule import collate

    hook = CachedRows({"train": rows})
    items = [hook.example("train", i, ex[i]) for i in indices]
    return hook.batch(items, collate(items, 0))


def write(path, ex, mode="topk", k=8, model=None, selection=None, max_shards=None, **kw):
    w = writer(path, mode, k, **kw)
    w.begin_split("train", C.data_fingerprint(ex, 12), selection)
    stats = C.cache_split(model or tiny_model(), ex, [w], "train", pad_id=0, batch_size=2, progress=False,
                          max_shards=max_shards)
    return w, stats


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("value_dtype", ["float16", "bfloat16"])
def test_round_trip_reads_back_exactly_what_was_written(tmp_path, value_dtype):
    """The version-1 layout (dense int32 ids, float values, float32 tail): every tensor bit for bit."""
    ex = examples()
    written: dict[str, list] = {}
    model = tiny_model()
    enc = C.Encoding.legacy(value_dtype)
    wt, ws = writer(tmp_path / "topk", "topk", encoding=enc), writer(tmp_path / "smp", "sampled", encoding=enc)
    for w in (wt, ws):
        w.begin_split("train", C.data_fingerprint(ex, 12))
        orig = w.write_shard

        def record(split, index, rows, lengths, _orig=orig, _w=w, **kw):
            written.setdefault(_w.mode, []).append((rows.ids.clone(), rows.values.clone(), rows.tail.clone(),
                                                    list(lengths)))
            return _orig(split, index, rows, lengths, **kw)

        w.write_shard = record
    stats = C.cache_split(model, ex, [wt, ws], "train", pad_id=0, batch_size=2, progress=False)  # one teacher pass
    assert stats.tokens == sum(len(e["input_ids"]) for e in ex) and stats.shards_written == 4
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[value_dtype]
    for mode, path in (("topk", tmp_path / "topk"), ("sampled", tmp_path / "smp")):
        reader = C.CacheReader(path)
        reader.verify()
        rows = reader.split("train")
        i = 0
        for ids, values, tail, lengths in written[mode]:
            a = 0
            for n in lengths:
                got = rows[i]
                assert got[0].dtype == torch.int32 and got[1].dtype == dtype
                assert torch.equal(got[0], ids[a:a + n].to(torch.int32))
                assert torch.equal(got[1], values[a:a + n].to(dtype))
                assert torch.equal(got[2], tail[a:a + n])
                assert got[0].shape == (len(ex[i]["input_ids"]), 8)
                a, i = a + n, i + 1
        assert i == len(ex)
        assert reader.manifest["bytes_per_token"] == 8 * (4 + 2) + 4
        n_bytes, n_tok = reader.stored_bytes()
        assert 8 * 6 + 4 < n_bytes / n_tok < 8 * 6 + 4 + 40  # the rows, plus offsets and file headers
    # and what was written is the teacher's distribution at every position of every example
    rows = C.CacheReader(tmp_path / "topk").split("train")
    for i in (0, 4):
        with torch.no_grad():
            logits = model(torch.tensor([ex[i]["input_ids"]])).logits[0]
        lp = torch.log_softmax(logits, -1)
        ids, values, tail = rows[i]
        assert torch.allclose(lp.gather(-1, ids.long()), values.float(), atol=2e-2)
        top = lp.topk(8, dim=-1).values
        assert torch.allclose(top, values.float(), atol=2e-2)
        assert torch.allclose(tail, 1 - top.exp().sum(-1), atol=1e-4)


def test_sparse_rows_through_the_collate_give_the_online_kl_when_k_is_the_vocabulary(tmp_path):
    """K = V, float32 values: the cached teacher equals the online one (loss and gradient)."""
    ex = examples(6)
    model = tiny_model(torch.float64)
    write(tmp_path, ex, k=V, model=model, encoding={"values": "float32", "tail": "float32"})
    batch = batch_of(C.CacheReader(tmp_path).split("train"), ex, range(6))
    assert batch["teacher_topk_ids"].shape == (*batch["input_ids"].shape, V)
    with torch.no_grad():
        online = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    teacher = CachedTeacher.__new__(CachedTeacher)  # the read path only (no manifest checks)
    teacher.renormalize, teacher.reader = True, C.CacheReader(tmp_path)
    out = teacher(batch, frozenset())
    assert out.kind == "sparse" and not out.sampled
    mask = batch["attention_mask"].bool()
    student = torch.randn(*batch["input_ids"].shape, V, dtype=torch.float64, requires_grad=True)
    sparse = SP.sparse_forward_kl(student, out.topk_ids, out.topk_logprobs)
    full = LF.forward_kl(student, online)
    assert torch.allclose(sparse[mask].double(), full[mask].double(), atol=1e-5)
    (g_sparse,) = torch.autograd.grad(sparse[mask].sum(), student)
    (g_full,) = torch.autograd.grad(full[mask].sum(), student)
    assert torch.allclose(g_sparse.double(), g_full.double(), atol=1e-5)


def test_padding_positions_and_renormalisation_stay_finite(tmp_path):
    ex = examples(6)
    write(tmp_path, ex, k=4, encoding=LEGACY16)
    batch = batch_of(C.CacheReader(tmp_path).split("train"), ex, (0, 3, 5))  # lengths 12, 8, 10
    assert (batch["attention_mask"] == 0).any()
    lp = renormalize(batch["teacher_topk_logprobs"], batch["teacher_tail"], sampled=False)
    # head + tail = 1 per position (the fp16 head alone does not quite)
    total = lp.exp().sum(-1) + batch["teacher_tail"]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    student = torch.randn(*batch["input_ids"].shape, V, requires_grad=True)
    value = SP.sparse_forward_kl(student, batch["teacher_topk_ids"], lp)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(student.grad).all()


# ----------------------------------------------------------------------------- resume
def test_resume_after_a_partial_write_equals_an_uninterrupted_cache(tmp_path):
    ex = examples(10)
    part = tmp_path / "part"
    w, stats = write(part, ex, "sampled", max_shards=2)
    assert stats.shards_written == 2
    manifest = json.loads((part / C.MANIFEST).read_text())
    assert sorted(manifest["splits"]["train"]["shards"]) == ["0", "1"] and not manifest["splits"]["train"]["complete"]
    with pytest.raises(RuntimeError, match=r"incomplete \(2 of 4 shards\).*rerun distill-cache-logits"):
        C.CacheReader(part).split("train")
    # a crash while writing shard 2 left a temporary file behind; it is ignored and replaced
    (part / (C.shard_name("train", 2) + ".tmp")).write_bytes(b"garbage")
    before = {p.name: p.stat().st_mtime_ns for p in part.glob("*.safetensors")}
    _, stats = write(part, ex, "sampled")
    assert (stats.shards_written, stats.shards_skipped) == (2, 2)
    assert all((part / n).stat().st_mtime_ns == t for n, t in before.items()), "finished shards are not rewritten"
    _, _ = write(tmp_path / "full", ex, "sampled")
    for s in range(4):
        name = C.shard_name("train", s)
        assert C.file_sha256(part / name) == C.file_sha256(tmp_path / "full" / name)
    assert not list(part.glob("*.tmp"))


def test_a_cache_of_selected_examples_names_the_fix_when_another_is_read(tmp_path):
    ex = examples(10)
    write(tmp_path, ex, selection={"kind": "visited", "max_steps": 1, "batch_size": 2, "seed": 0,
                                   "indices": [1, 7], "indices_sha256": "x"})
    rows = C.CacheReader(tmp_path).split("train")
    assert 1 in rows and 7 in rows and 2 not in rows
    assert rows[7][0].shape[0] == len(ex[7]["input_ids"])
    with pytest.raises(KeyError, match=r"example 2 .*first 1 steps.*cache.max_steps"):
        rows[2]


# ----------------------------------------------------------------------------- mismatches
def test_writer_refuses_a_folder_holding_another_cache(tmp_path):
    ex = examples(4)
    write(tmp_path, ex, k=8)
    with pytest.raises(C.CacheMismatchError, match=r"k: cache 8 vs this run 4[\s\S]*cache.overwrite=true"):
        writer(tmp_path, k=4)
    other_teacher = {**TEACHER, "weights": {"kind": "state_dict", "sha256": "other"}}
    with pytest.raises(C.CacheMismatchError, match="teacher:"):
        C.CacheWriter(tmp_path, mode="topk", k=8, vocab_size=V, teacher=other_teacher, tokenizer=TOKENIZER,
                      shard_size=3)
    w = writer(tmp_path, k=8)
    with pytest.raises(C.CacheMismatchError, match=r"split .train. was cached from other data[\s\S]*num_examples"):
        w.begin_split("train", C.data_fingerprint(examples(5), 12))
    writer(tmp_path, k=4, overwrite=True)  # replaces it
    assert json.loads((tmp_path / C.MANIFEST).read_text())["k"] == 4
    assert not list(tmp_path.glob("*.safetensors"))


# ----------------------------------------------------------------------------- through the configs
SMALL = ["debug=tiny", "data.source.max_chars=12000", "data.max_val_examples=4"]


def compose_cfg(overrides: list[str], output_dir: Path, config_name: str = "train"):
    """Compose ``conf/<config_name>.yaml`` as the CLI would."""
    from distill.config import compose_config

    return compose_config(config_name, overrides, output_dir, root_dir=Path(__file__).resolve().parents[2])


def _cache(tmp_path, *overrides, name="c"):
    from distill.teachers.cache.cli import cache_logits

    cfg = compose_cfg([*SMALL, "cache.k=8", "cache.progress=false", f"cache.dir={tmp_path / name}", *overrides],
                      tmp_path / "cache_run", config_name="cache_logits")
    return cache_logits(cfg)


def _train_cfg(tmp_path, *overrides, name="c"):
    return compose_cfg([*SMALL, "teacher=cached", "loss=kd_chunked", "teacher.source=tiny_random", "teacher.k=8",
                        f"teacher.path={tmp_path / name}", *overrides], tmp_path / "train_run")


def test_cli_cache_then_teacher_cached_training_run(tmp_path):
    from distill import pipeline

    reader = _cache(tmp_path, "cache.max_steps=4")
    m = reader.manifest
    assert m["teacher"]["choice"] == "tiny_random" and m["mode"] == "topk" and m["k"] == 8
    assert m["splits"]["train"]["selection"]["count"] <= 16 and m["splits"]["val"]["complete"]
    metrics = pipeline.run(_train_cfg(tmp_path))
    assert math.isfinite(metrics["train/kl"]) and metrics["train/kl"] >= 0
    # validation scores the student against the cached rows of the val split too
    assert {"val/loss", "val/kl_sparse", "val/agreement"} <= set(metrics)
    # a longer run than the cache covers fails before training, naming the fix
    with pytest.raises(C.CacheMismatchError, match="cache.max_steps=6"):
        pipeline.run(_train_cfg(tmp_path, "trainer.max_steps=6"))


def test_mismatched_data_tokenizer_teacher_and_settings_are_clear_errors(tmp_path):
    from distill.data.tokenizer import train_bpe_tokenizer
    from distill.build import build_components

    _cache(tmp_path)
    # data: another block length gives other examples
    with pytest.raises(C.CacheMismatchError, match=r"train data:[\s\S]*seq_len: cache 32 vs this run 16[\s\S]*"
                                                   r"distill-cache-logits"):
        build_components(_train_cfg(tmp_path, "data.seq_len=16")).load()
    # settings the config expects
    with pytest.raises(C.CacheMismatchError, match=r"teacher.k=16 but the cache holds 8"):
        build_components(_train_cfg(tmp_path, "teacher.k=16")).load()
    with pytest.raises(C.CacheMismatchError, match=r"no teacher cache there[\s\S]*distill-cache-logits"):
        build_components(_train_cfg(tmp_path, name="missing")).load()
    # tokenizer: a different vocabulary
    tok_dir = tmp_path / "other_tok"
    train_bpe_tokenizer(["def f(x):\n    return x + 1\n" * 50], 300, tok_dir)
    with pytest.raises(C.CacheMismatchError, match=r"tokenizer .*other_tok.* cached ids would mean other tokens"):
        build_components(_train_cfg(tmp_path, f"student.tokenizer={tok_dir}", "student.config.vocab_size=300",
                                    "~student.tokenizer_build")).load()


def test_a_changed_teacher_is_detected(tmp_path):
    from distill.build import build_components

    folder = tmp_path / "teacher_model"
    tiny_model(vocab_size=2048).save_pretrained(folder)  # the tiny configs' stdlib BPE has 2048 ids
    common = [f"+teacher.model.name_or_path={folder}", "~teacher.model.config"]
    reader = _cache(tmp_path, *common, "cache.teacher_name=tiny_random")
    assert reader.manifest["teacher"]["weights"]["kind"] == "files"
    build_components(_train_cfg(tmp_path)).load()  # unchanged: fine
    model = tiny_model(vocab_size=2048)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    model.save_pretrained(folder)
    with pytest.raises(C.CacheMismatchError, match=r"teacher at .*teacher_model changed since the cache"):
        build_components(_train_cfg(tmp_path)).load()


def test_the_cached_teacher_adds_a_hook_and_leaves_the_datamodule_its_own(tmp_path):
    """Issue 10: the cached rows come through the DataModule's public BatchHook seam."""
    from distill.build import build_components
    from distill.data.datamodule import ExampleDataset

    _cache(tmp_path, "cache.max_steps=2")
    parts = build_components(_train_cfg(tmp_path, "trainer.max_steps=2"))
    dm = parts.datamodule
    assert type(dm.train_set) is ExampleDataset and type(dm.val_set) is ExampleDataset
    assert "_collate" not in vars(dm) and "collate" not in vars(dm)
    assert [type(h) for h in dm.hooks] == [CachedRows]
    batch = next(iter(dm.train_dataloader()))
    assert batch["teacher_topk_ids"].shape == (*batch["input_ids"].shape, 8)
    assert "teacher_topk_ids" not in dm.examples("train")[0]  # the DataModule's own examples stay as they were
    # the examples the cache holds are exactly those of the run's first steps
    visited = sorted({i for b in dm.train_order(2) for i in b})
    rows = C.CacheReader(tmp_path / "c").split("train")
    assert [i for i in range(len(rows)) if i in rows] == visited
    parts.teacher.prepare(dm)  # once per DataModule
    CachedTeacher(str(tmp_path / "c"), source="tiny_random", k=8).prepare(dm)  # another cached teacher replaces it
    assert len(dm.hooks) == 1
