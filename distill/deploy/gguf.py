"""GGUF export with llama.cpp's own converter, and a check of the file in llama-cpp-python.

Converter: ``convert_hf_to_gguf.py`` from llama.cpp (with its ``conversion/`` package and
``gguf-py``). It is not on PyPI as a package of its own, but every ``llama-cpp-python`` source
release vendors the matching llama.cpp tree, so it installs from the registry without compiling::

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/llama
    tar xzf /tmp/llama/llama_cpp_python-0.3.36.tar.gz -C /tmp/llama
    export LLAMA_CPP_DIR=/tmp/llama/llama_cpp_python-0.3.36/vendor/llama.cpp

(or point ``LLAMA_CPP_DIR`` at any llama.cpp checkout). It writes f16 and Q8_0 directly
(``--outtype``); other quantisations need llama.cpp's compiled ``llama-quantize``.

One adaptation, in :func:`_convert_script`: the converter recognises a BPE pre-tokenizer by the
hash of known models' token ids, so a tokenizer trained here is always "not recognised". When its
``tokenizer.json`` uses the byte-level pre-tokenizer with GPT-2's split pattern (what
``tokenizers``' ``ByteLevel`` does, and what the project's tokenizers use), llama.cpp's ``gpt-2``
pre-tokenizer is the same rule and is used; any other tokenizer still fails as upstream does.

Check: :func:`check_gguf` loads the file with ``llama-cpp-python`` (``pip install
llama-cpp-python``: a C++ build of several minutes) and compares the next-token distribution with
PyTorch's on the same token ids.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
CONVERTER_ENV = "LLAMA_CPP_DIR"
FETCH_HINT = ("pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/llama && "
              "tar xzf /tmp/llama/llama_cpp_python-0.3.36.tar.gz -C /tmp/llama && "
              "export LLAMA_CPP_DIR=/tmp/llama/llama_cpp_python-0.3.36/vendor/llama.cpp")


def find_converter(llama_cpp_dir: str | Path | None = None) -> Path | None:
    """The llama.cpp folder holding ``convert_hf_to_gguf.py`` (argument, then $LLAMA_CPP_DIR)."""
    for cand in (llama_cpp_dir, os.environ.get(CONVERTER_ENV)):
        if cand and (Path(cand) / "convert_hf_to_gguf.py").exists():
            return Path(cand)
    return None


def is_gpt2_byte_level(hf_dir: str | Path) -> bool:
    """True when ``tokenizer.json`` is a BPE with a byte-level, GPT-2-regex pre-tokenizer."""
    path = Path(hf_dir) / "tokenizer.json"
    if not path.exists():
        return False
    tok = json.loads(path.read_text(encoding="utf-8"))
    pre = tok.get("pre_tokenizer") or {}
    return (tok.get("model", {}).get("type") == "BPE" and tok.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False))


def _convert_script(llama_dir: Path, argv: Sequence[str]) -> str:
    """Python source that runs the converter with the byte-level fallback described above."""
    return f"""
import logging, runpy, sys
sys.path[:0] = [{str(llama_dir)!r}, {str(llama_dir / 'gguf-py')!r}]
sys.argv = [{str(llama_dir / 'convert_hf_to_gguf.py')!r}, *{list(argv)!r}]
try:
    from conversion.base import TextModel
except ImportError:  # older llama.cpp: everything lives in the script itself
    TextModel = None
if TextModel is not None and {is_gpt2_byte_level(argv[0])!r}:
    _upstream = TextModel.get_vocab_base_pre
    def get_vocab_base_pre(self, tokenizer):
        try:
            return _upstream(self, tokenizer)
        except NotImplementedError:
            logging.getLogger("distill").warning(
                "pre-tokenizer hash unknown; tokenizer.json is byte-level BPE with GPT-2's split "
                "pattern, so llama.cpp's 'gpt-2' pre-tokenizer is used")
            return "gpt-2"
    TextModel.get_vocab_base_pre = get_vocab_base_pre
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def export_gguf(hf_dir: str | Path, out_file: str | Path, outtype: str = "f16",
                llama_cpp_dir: str | Path | None = None, timeout_s: float = 1800) -> Path:
    """Convert an exported HF folder to one GGUF file of type ``outtype`` (f32, f16, bf16, q8_0)."""
    if outtype not in GGUF_TYPES:
        raise ValueError(f"gguf outtype must be one of {GGUF_TYPES}, got {outtype!r}")
    llama_dir = find_converter(llama_cpp_dir)
    if llama_dir is None:
        raise FileNotFoundError(
            f"llama.cpp's convert_hf_to_gguf.py not found: set {CONVERTER_ENV} to a llama.cpp "
            f"folder, e.g. the one in llama-cpp-python's source release: {FETCH_HINT}")
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(Path(hf_dir)), "--outfile", str(out), "--outtype", outtype]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _convert_script(llama_dir, argv)],
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"convert_hf_to_gguf.py failed for {hf_dir} (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    log.info("GGUF %s -> %s (%.1fs, %.1f MB)", outtype, out, time.perf_counter() - start,
             out.stat().st_size / 1e6)
    return out


def load_llama(gguf_file: str | Path, n_ctx: int = 512, threads: int | None = None,
               logits_all: bool = True):
    """A ``llama_cpp.Llama``; ``logits_all`` keeps every position's logits (for the checks)."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise ImportError("the GGUF check needs `pip install llama-cpp-python` (compiles "
                          "llama.cpp: several minutes)") from exc
    return Llama(model_path=str(gguf_file), n_ctx=int(n_ctx), logits_all=logits_all,
                 verbose=False, n_threads=threads or None, n_threads_batch=threads or None,
                 n_batch=int(n_ctx))


def llama_next_token_logits(llm, ids: Sequence[int]):
    """Logits of the token after ``ids`` (numpy ``(vocab,)``)."""
    import numpy as np

    llm.reset()
    llm.eval(list(ids))
    return np.asarray(llm.scores[len(ids) - 1], dtype=np.float32)


def check_gguf(hf_dir: str | Path, gguf_file: str | Path, prompts: Sequence[str],
               threads: int | None = None) -> dict[str, Any]:
    """Next-token distributions of llama.cpp vs PyTorch on each prompt's token ids.

    Reports the total-variation distance and KL(torch || gguf) of the softmax, whether the top-1
    token agrees, and whether llama.cpp tokenizes the prompt as the HF tokenizer does.
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    llm = load_llama(gguf_file, threads=threads)
    rows = []
    for p in prompts:
        ids = tok(p, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0, -1].float().numpy()
        got = llama_next_token_logits(llm, ids)[: ref.shape[-1]]
        pr, pg = _softmax(ref), _softmax(got)
        rows.append({
            "prompt": p, "tv": float(0.5 * np.abs(pr - pg).sum()),
            "kl": float((pr * (np.log(pr + 1e-12) - np.log(pg + 1e-12))).sum()),
            "top1_equal": int(ref.argmax()) == int(got.argmax()),
            "tokens_equal": llm.tokenize(p.encode(), add_bos=False, special=False) == ids,
        })
    return {"file": str(gguf_file), "prompts": rows,
            "max_tv": max(r["tv"] for r in rows), "max_kl": max(r["kl"] for r in rows),
            "top1_agreement": sum(r["top1_equal"] for r in rows) / len(rows),
            "tokenization_equal": all(r["tokens_equal"] for r in rows)}


def _softmax(x):
    import numpy as np

    z = np.exp(x - x.max())
    return z / z.sum()
