"""ONNX export with past key values: logits and greedy tokens equal PyTorch's; int8 runs."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distill.deploy.onnx import INT8_FILE, META_FILE, ONNX_FILE, OrtCausalLM, export_onnx, quantize_int8  # noqa: E402
from distill.deploy.verify import check_onnx, heldout_batches  # noqa: E402
from tests.evaluation.conftest import CODE_TEXT, save_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    hf = save_tiny_model(tmp_path_factory.mktemp("hf"), seed=3)
    out = tmp_path_factory.mktemp("onnx")
    quantize_int8(export_onnx(hf, out))
    return hf, out


def test_export_writes_a_self_contained_folder(exported):
    _, out = exported
    meta = json.loads((out / META_FILE).read_text())
    assert (out / ONNX_FILE).exists() and (out / INT8_FILE).exists()
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    assert meta["inputs"][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert meta["outputs"][1] == "present.0.key" and meta["int8_file"] == INT8_FILE


def test_logits_with_and_without_cache_and_left_padding(exported):
    from transformers import AutoModelForCausalLM

    hf, out = exported
    model = AutoModelForCausalLM.from_pretrained(hf).eval()
    ort = OrtCausalLM(out / ONNX_FILE)
    ids = torch.randint(4, 300, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.numpy()
    got = ort.logits(ids.numpy(), mask.numpy())
    keep = mask.numpy().astype(bool)
    assert np.abs(got[keep] - ref[keep]).max() < 1e-4
    # the same positions computed in two steps through the exported cache
    first, past = ort.run(ids[:, :6].numpy(), mask[:, :6].numpy(), pos[:, :6].numpy(), None)
    second, _ = ort.run(ids[:, 6:].numpy(), mask.numpy(), pos[:, 6:].numpy(), past)
    assert np.abs(np.concatenate([first, second], 1)[keep] - ref[keep]).max() < 1e-4


def test_check_against_pytorch(exported):
    hf, out = exported
    report = check_onnx(hf, out, [CODE_TEXT * 3], ["def add(a, b):\n", "for i in range("],
                        max_new_tokens=10)
    assert report["ok"] and report["greedy_equal"]
    assert report["logits_max_abs_diff"] < 1e-4 <= report["atol"]
    assert all(len(g["torch"]) == len(g["onnx"]) > 0 for g in report["greedy"])
    h = report["heldout"]
    assert h["torch"]["tokens"] == h["onnx_fp32"]["tokens"] == h["onnx_int8"]["tokens"] > 100
    assert abs(h["onnx_fp32"]["loss"] - h["torch"]["loss"]) < 1e-4
    assert report["int8_ce_change"] == pytest.approx(h["onnx_int8"]["loss"] - h["torch"]["loss"])


def test_check_fails_for_a_different_model(exported, tmp_path):
    _, out = exported
    other = save_tiny_model(tmp_path / "other", seed=4)  # same shapes, other weights
    report = check_onnx(other, out, [CODE_TEXT], ["def add(a, b):\n"], max_new_tokens=4)
    assert not report["ok"] and report["logits_max_abs_diff"] > report["atol"]


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        export_onnx(tmp_path, tmp_path / "out")
    (tmp_path / ONNX_FILE).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="onnx_export.json not found"):
        OrtCausalLM(tmp_path / ONNX_FILE)


def test_heldout_batches_pack_like_distill_eval(exported):
    from transformers import AutoTokenizer

    hf, _ = exported
    tok = AutoTokenizer.from_pretrained(hf)
    batches = heldout_batches(tok, [CODE_TEXT * 4], max_length=32, batch_size=2)
    assert batches and batches[0]["input_ids"].shape[1] <= 32
    assert (batches[0]["labels"] >= -100).all()
