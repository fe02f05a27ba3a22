"""The speed table: every backend timed in one process, interleaved; the table reports quality too."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

from distill.deploy.speed import run, table, time_backends  # noqa: E402
from tests.evaluation.conftest import save_tiny_model  # noqa: E402


def test_time_backends_interleaves_and_counts_tokens():
    calls = []

    def backend(name, tokens):
        def gen(ids):
            calls.append(name)
            return tokens
        return gen

    out = time_backends({"a": backend("a", 4), "b": backend("b", 8)}, [[1], [2]], rounds=2)
    assert set(out) == {"a", "b"} and all(v["tokens_per_s"] > 0 for v in out.values())
    # one warm-up each, then round by round: a a b b | a a b b
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 2


def test_run_writes_results_and_table(tmp_path):
    hf = save_tiny_model(tmp_path / "hf", hidden=32)
    r = run(hf, tmp_path / "out", threads=1, new_tokens=4, rounds=1, gguf=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["speed"]) == {"PyTorch fp32", "ONNX Runtime fp32", "ONNX Runtime int8"}
    assert saved["onnx_check"]["ok"] and saved["machine"]["cpu"] is not None
    text = (tmp_path / "out" / "table.md").read_text()
    assert text == table(r) and "| ONNX Runtime int8 |" in text and "CE change" in text
    assert saved["size_bytes"]["ONNX Runtime int8"] < saved["size_bytes"]["ONNX Runtime fp32"]
