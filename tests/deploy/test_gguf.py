"""GGUF export by llama.cpp's converter, checked in llama-cpp-python against PyTorch.

Runs where both exist: the converter (``LLAMA_CPP_DIR``, see docs/deploy.md: it comes from
llama-cpp-python's source release, no build) and the compiled ``llama-cpp-python``. CI installs
neither (the build takes minutes), so there these tests skip and say why.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from distill.deploy.gguf import FETCH_HINT, export_gguf, find_converter, is_gpt2_byte_level
from tests.evaluation.conftest import save_tiny_model

needs_converter = pytest.mark.skipif(
    find_converter() is None,
    reason=f"llama.cpp's convert_hf_to_gguf.py not found; to run: {FETCH_HINT}")


def _has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


needs_llama_cpp = pytest.mark.skipif(
    not _has_llama_cpp(),
    reason="llama-cpp-python is not installed (pip install llama-cpp-python: a C++ build of "
           "several minutes, so CI does not install it)")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("hf"), seed=5, hidden=64)


def test_tokenizer_rule_for_the_gpt2_fallback(hf_dir, tmp_path):
    assert is_gpt2_byte_level(hf_dir)  # tokenizers' ByteLevel BPE, as the project trains it
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    assert not is_gpt2_byte_level(tmp_path)


def test_missing_converter_names_the_fix(hf_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="LLAMA_CPP_DIR"):
        export_gguf(hf_dir, tmp_path / "m.gguf", llama_cpp_dir=tmp_path)
    with pytest.raises(ValueError, match="outtype"):
        export_gguf(hf_dir, tmp_path / "m.gguf", outtype="q4_k_m")


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
    """f16 and Q8_0 files, converted once for the module (each conversion is a ~5 s subprocess)."""
    if find_converter() is None:
        pytest.skip(f"llama.cpp's convert_hf_to_gguf.py not found; to run: {FETCH_HINT}")
    out = tmp_path_factory.mktemp("gguf")
    return {t: export_gguf(hf_dir, out / f"m-{t}.gguf", t) for t in ("f16", "q8_0")}


@needs_converter
def test_convert_f16_and_q8_0(hf_dir, converted):
    f16, q8 = converted["f16"], converted["q8_0"]
    # read back with the gguf package the converter ships: llama arch, our vocabulary
    code = ("import sys, gguf; r = gguf.GGUFReader(sys.argv[1]); "
            "f = r.fields['general.architecture']; print(bytes(f.parts[-1]).decode(), "
            "len(r.fields['tokenizer.ggml.tokens'].data))")
    out = subprocess.run([sys.executable, "-c", code, str(f16)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(find_converter() / "gguf-py")}, check=True)
    arch, n_tokens = out.stdout.split()
    assert arch == "llama" and int(n_tokens) == len(json.loads(
        (hf_dir / "tokenizer.json").read_text())["model"]["vocab"])
    assert q8.stat().st_size < f16.stat().st_size


@needs_converter
@needs_llama_cpp
def test_llama_cpp_matches_pytorch(hf_dir, converted):
    from distill.deploy.gguf import check_gguf

    prompts = ["def add(a, b):\n", "class Stack:\n    def push(self, x):\n", "for i in range(10):\n"]
    f16 = check_gguf(hf_dir, converted["f16"], prompts)
    q8 = check_gguf(hf_dir, converted["q8_0"], prompts)
    assert f16["tokenization_equal"] and f16["top1_agreement"] == 1.0
    assert f16["max_tv"] < 5e-3 and f16["max_kl"] < 1e-4
    assert q8["max_tv"] < 5e-2 and q8["max_tv"] >= f16["max_tv"] * 0.5
