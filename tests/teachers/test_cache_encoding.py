"""Compact cache encodings: counts, narrow ids, q8 values, zstd, and format versions."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from distill.losses import sparse as SP
from distill.teachers import cache as C
from distill.teachers.cache import codec
from distill.teachers.cached import renormalize
from tests.teachers.test_cache import TEACHER, TOKENIZER, V, batch_of, examples, tiny_model, write, writer


def logits(seed: int, n: int, vocab: int = V, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed))


def roundtrip(rows: C.Rows, enc: C.Encoding, k: int):
    """pack -> unpack of one example, through the same field reader a plain shard uses."""
    fields, _ = codec.pack(rows, enc, k)
    cursor = {name: 0 for name in fields}

    def get(name, nbytes):
        a = cursor[name]
        cursor[name] += nbytes
        return fields[name][a:a + nbytes]

    out = codec.unpack(get, enc, k, len(rows))
    assert all(cursor[n] == len(fields[n]) for n in fields), "every stored byte is read"
    return out


# ----------------------------------------------------------------------------- counts
@pytest.mark.parametrize("k", [1, 8, 64, 255])
def test_the_count_encoding_reproduces_the_old_weights_exactly(k):
    z = logits(0, 50)
    old_ids, old_logw = C.sample_from_logits(z, k, torch.Generator().manual_seed(1))  # what v1 stored (as fp32)
    rows = C.encode(z, "sampled", k, torch.Generator().manual_seed(1))
    enc = C.Encoding.resolve("sampled", k, V)
    assert (enc.layout, enc.ids, enc.values, enc.tail) == ("ragged", "uint16", "counts", "none")
    ids, logw, tail = roundtrip(rows, enc, k)
    width = ids.shape[1]
    assert tail is None and ids.dtype == torch.int32 and logw.dtype == torch.float32
    assert torch.equal(ids.long(), old_ids[:, :width]) and torch.equal(logw, old_logw[:, :width])  # bit for bit
    assert (old_logw[:, width:] == -math.inf).all()  # what the ragged rows leave out is padding only
    counts = (logw.exp() * k).round()
    assert torch.equal(counts.sum(-1), torch.full((50,), float(k)))  # the draws' counts, summing to k
    assert torch.equal(torch.log(counts / k), logw)
    # bytes: one count per token, 2 + 1 per distinct id
    distinct = (old_logw > -math.inf).sum(-1).float().mean()
    assert enc.bytes_per_token(k, float(distinct)) == pytest.approx(1 + 3 * float(distinct))


def test_a_count_encoded_cache_trains_as_the_float32_weights_do(tmp_path):
    ex = examples(6)
    model = tiny_model()
    write(tmp_path / "counts", ex, "sampled", k=16, model=model)
    rows = C.CacheReader(tmp_path / "counts").split("train")
    batch = batch_of(rows, ex, (0, 3, 5))  # ragged widths differ per example and token
    assert "teacher_tail" not in batch and batch["teacher_topk_ids"].shape[-1] <= 16
    w = writer(tmp_path / "unused", "sampled", k=16)
    student = torch.randn(*batch["input_ids"].shape, V, requires_grad=True)
    lp = renormalize(batch["teacher_topk_logprobs"], None, sampled=True)
    value = SP.sparse_forward_kl(student, batch["teacher_topk_ids"], lp, sampled=True)
    for b, i in enumerate((0, 3, 5)):
        with torch.no_grad():
            z = model(torch.tensor([ex[i]["input_ids"]])).logits[0]
        ids, logw = C.sample_from_logits(z, 16, w.generator("train", i))
        ref = SP.sparse_forward_kl(student[b, :len(z)], ids, logw, sampled=True)
        assert torch.allclose(value[b, :len(z)], ref, atol=1e-5)
    value[batch["attention_mask"].bool()].sum().backward()
    assert torch.isfinite(student.grad).all()


# ----------------------------------------------------------------------------- ids
def test_three_byte_ids_round_trip_over_the_whole_id_range():
    for a in range(0, 1 << 24, 1 << 21):
        ids = torch.arange(a, a + (1 << 21), dtype=torch.int64)
        packed = codec.pack_ids(ids, 3)
        assert packed.dtype == torch.uint8 and packed.numel() == 3 * ids.numel()
        assert torch.equal(codec.unpack_ids(packed, 3).long(), ids)
    ids = torch.arange(1 << 16)
    assert torch.equal(codec.unpack_ids(codec.pack_ids(ids, 2), 2).long(), ids)
    edge = torch.tensor([0, 1, (1 << 31) - 1, 151_935])
    assert torch.equal(codec.unpack_ids(codec.pack_ids(edge, 4), 4).long(), edge)
    # the narrowest width is picked from the vocabulary, and a too-narrow one is refused by name
    assert C.Encoding.resolve("topk", 8, 65_536).ids == "uint16"
    assert C.Encoding.resolve("topk", 8, 65_537).ids == "uint24"
    assert C.Encoding.resolve("topk", 8, 151_936).ids == "uint24"
    with pytest.raises(ValueError, match=r"cache.encoding.ids=uint16 .*151936.*ids=auto"):
        C.Encoding.resolve("topk", 8, 151_936, ids="uint16")


# ----------------------------------------------------------------------------- q8
@pytest.mark.parametrize("scale", [0.3, 3.0, 12.0])
def test_q8_top_k_values_reconstruct_within_the_stated_bound(scale):
    z = logits(2, 200, vocab=512, scale=scale)
    rows = C.encode(z, "topk", 32)
    enc = C.Encoding.resolve("topk", 32, 512)
    assert (enc.values, enc.tail) == ("q8", "float16")
    ids, lp, tail = roundtrip(rows, enc, 32)
    assert torch.equal(ids.long(), rows.ids)
    exact = torch.log_softmax(z, -1).gather(-1, rows.ids)
    err = (renormalize(lp, tail, sampled=False) - exact).abs().amax(-1)
    bound = codec.q8_error_bound(exact, rows.tail)
    assert (err <= bound).all(), float((err - bound).max())
    assert float(bound.max()) < (exact[:, 0] - exact[:, -1]).max() / 255 * 1.01 + 2e-3  # about range / 255
    # head + stored tail = 1, as the tail bucket needs
    total = lp.exp().sum(-1) + tail
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    assert enc.bytes_per_token(32) == 2 + 2 + 32 * (2 + 1)  # step, tail, then ids and codes


# ----------------------------------------------------------------------------- zstd
@pytest.mark.parametrize("mode", ["sampled", "topk"])
def test_zstd_shards_are_lossless_and_smaller(tmp_path, mode):
    pytest.importorskip("zstandard")
    ex = examples(10)
    model = tiny_model()
    w_plain = writer(tmp_path / "plain", mode, k=32, shard_size=4)
    w_zstd = writer(tmp_path / "zstd", mode, k=32, shard_size=4, encoding={"compression": "zstd"})
    for w in (w_plain, w_zstd):
        w.begin_split("train", C.data_fingerprint(ex, 12))
    C.cache_split(model, ex, [w_plain, w_zstd], "train", pad_id=0, batch_size=3, progress=False)
    plain, zstd = (C.CacheReader(tmp_path / n) for n in ("plain", "zstd"))
    assert zstd.encoding.compression == "zstd" and zstd.manifest["encoding"]["compression"] == "zstd"
    a, b = plain.split("train"), zstd.split("train")
    for i in range(len(ex)):
        for x, y in zip(a[i], b[i]):
            assert (x is None and y is None) or torch.equal(x, y)
    assert zstd.stored_bytes()[0] < plain.stored_bytes()[0]


# ----------------------------------------------------------------------------- format versions
def test_an_unknown_encoding_or_version_is_refused_with_the_fix(tmp_path):
    write(tmp_path, examples(4), "sampled")
    manifest = json.loads((tmp_path / C.MANIFEST).read_text())
    manifest["encoding"]["values"] = "q4"
    (tmp_path / C.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(C.CacheFormatError, match=r"values='q4' \(known: .*counts\).*another version of distill"
                                                 r".*cache.overwrite=true"):
        C.CacheReader(tmp_path)
    manifest["encoding"]["values"], manifest["version"] = "counts", 3
    (tmp_path / C.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(C.CacheFormatError, match=r"version 3; this distill reads versions 1 and 2.*newer distill: "
                                                 r"upgrade distill, or rewrite"):
        C.CacheReader(tmp_path)
    manifest["format"] = "something-else"
    (tmp_path / C.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(C.CacheFormatError, match="not a distill teacher cache"):
        C.CacheReader(tmp_path)


def write_version1(path, ex, k=8) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A cache exactly as distill wrote it before encodings existed (manifest version 1)."""
    path.mkdir()
    model = tiny_model()
    rows, lengths = [], []
    for e in ex:
        with torch.no_grad():
            z = model(torch.tensor([e["input_ids"]])).logits[0]
        r = C.encode(z, "topk", k)
        rows.append((r.ids.to(torch.int32), r.values.half(), r.tail))
        lengths.append(len(e["input_ids"]))
    offsets = torch.zeros(len(ex) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths).cumsum(0)
    save_file({"topk_ids": torch.cat([r[0] for r in rows]), "topk_logprobs": torch.cat([r[1] for r in rows]),
               "tail": torch.cat([r[2] for r in rows]), "indices": torch.arange(len(ex)), "offsets": offsets},
              str(path / "train-00000.safetensors"))
    size = (path / "train-00000.safetensors").stat().st_size
    manifest = {"format": "distill-teacher-cache", "version": 1, "mode": "topk", "k": k, "vocab_size": V,
                "value_dtype": "float16", "id_dtype": "int32", "shard_size": 1024, "seed": 0,
                "proposal_temperature": 1.0, "teacher": TEACHER, "tokenizer": TOKENIZER,
                "bytes_per_token": k * 6 + 4, "splits": {"train": {
                    "data": C.data_fingerprint(ex, 12), "selection": {"kind": "all", "count": len(ex)},
                    "num_shards": 1, "complete": True,
                    "shards": {"0": {"file": "train-00000.safetensors", "examples": len(ex), "tokens": int(offsets[-1]),
                                     "bytes": size, "sha256": C.file_sha256(path / "train-00000.safetensors")}}}}}
    (path / C.MANIFEST).write_text(json.dumps(manifest))
    return rows


def test_a_version1_cache_still_loads_bit_for_bit(tmp_path):
    ex = examples(5)
    rows = write_version1(tmp_path / "v1", ex)
    reader = C.CacheReader(tmp_path / "v1")
    assert reader.version == 1 and reader.encoding == C.Encoding.legacy("float16")
    reader.verify()
    split = reader.split("train")
    for i, (ids, values, tail) in enumerate(rows):
        got = split[i]
        assert got[0].dtype == torch.int32 and got[1].dtype == torch.float16
        assert torch.equal(got[0], ids) and torch.equal(got[1], values) and torch.equal(got[2], tail)
    batch = batch_of(split, ex, (0, 1, 4))
    assert batch["teacher_topk_ids"].shape == (3, 12, 8) and batch["teacher_tail"].shape == (3, 12)
    # a writer does not append version-2 shards to a version-1 folder: it names the fix
    with pytest.raises(C.CacheMismatchError, match=r"version: cache 1 vs this run 2[\s\S]*cache.overwrite=true"):
        writer(tmp_path / "v1", shard_size=1024)


# ----------------------------------------------------------------------------- layout
def test_file_bytes_follow_the_encoding_layout(tmp_path):
    ex = examples(10)
    _, stats = write(tmp_path, ex, "sampled", k=32, shard_size=10)
    reader = C.CacheReader(tmp_path)
    n_bytes, n_tok = reader.stored_bytes()
    layout = reader.encoding.bytes_per_token(32, reader.mean_entries())
    assert layout == pytest.approx(1 + 3 * reader.mean_entries())
    overhead = n_bytes - layout * n_tok  # offsets, indices and the safetensors header
    assert 0 < overhead < 2000
    with pytest.raises(ValueError, match="values=counts .*proposal_temperature=1"):
        C.Encoding.resolve("sampled", 8, V, 2.0, values="counts")
    assert C.Encoding.resolve("sampled", 8, V, 2.0).values == "float16"  # other proposals keep the weights path
    with pytest.raises(ValueError, match="layout=ragged .*layout=dense"):
        C.Encoding.resolve("topk", 8, V, layout="ragged")
