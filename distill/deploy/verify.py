"""Checks of an exported model against the PyTorch student it came from.

* logits: the largest absolute difference over held-out text (packed as ``distill-eval``
  packs it) must stay within a stated tolerance;
* greedy decoding: the same new tokens for every prompt;
* quality: held-out cross-entropy per token of each variant (the int8 loss is the change in CE).

Each backend is a callable ``logits_fn(input_ids, attention_mask) -> logits`` over numpy arrays,
so PyTorch, ONNX Runtime (fp32 / int8) and llama.cpp go through the same code.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

# fp32 ONNX Runtime vs PyTorch differ by kernel order only: measured ~1e-6 on the tests' models.
LOGITS_ATOL = 1e-3


def torch_logits_fn(model) -> Callable:
    import numpy as np
    import torch

    def fn(input_ids, attention_mask):
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(np.asarray(input_ids)),
                        attention_mask=torch.as_tensor(np.asarray(attention_mask))).logits
        return out.float().numpy()

    return fn


def torch_greedy(model, prompt_ids: Sequence[int], max_new_tokens: int, eos_token_id, pad_token_id
                 ) -> list[int]:
    import torch

    ids = torch.tensor([list(prompt_ids)])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=int(max_new_tokens), eos_token_id=eos_token_id,
                             pad_token_id=pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def heldout_batches(tokenizer, texts: Sequence[str], max_length: int = 128, max_tokens: int = 4096,
                    batch_size: int = 4) -> list[dict]:
    """Packed held-out blocks, the way ``distill-eval``'s held-out metrics pack them."""
    from distill.evaluation.heldout import HeldoutSettings, pack_batches

    settings = HeldoutSettings(source="given", max_length=max_length, max_tokens=max_tokens,
                               batch_size=batch_size)
    return [{k: v.numpy() for k, v in b.items()} for b in pack_batches(list(texts), tokenizer,
                                                                       settings)]


def heldout_ce(logits_fn: Callable, batches: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Held-out loss and perplexity per token (``distill.metrics``, as training reports them)."""
    import torch

    from distill.metrics import accumulate, finalize, heldout_metrics

    total: dict[str, float] = {}
    for b in batches:
        logits = torch.as_tensor(logits_fn(b["input_ids"], b["attention_mask"]))
        targets = torch.as_tensor(b["labels"])[:, 1:]
        accumulate(total, heldout_metrics(logits[:, :-1], None, targets))
    out = finalize(total)
    return {"loss": out["loss"], "ppl": out["ppl"], "tokens": int(total["tokens"])}


def max_logits_diff(fn_a: Callable, fn_b: Callable, batches: Sequence[Mapping[str, Any]]) -> float:
    """Largest |a - b| over the unpadded positions of every batch."""
    import numpy as np

    worst = 0.0
    for b in batches:
        a = fn_a(b["input_ids"], b["attention_mask"])
        c = fn_b(b["input_ids"], b["attention_mask"])
        keep = np.asarray(b["attention_mask"]).astype(bool)
        worst = max(worst, float(np.abs(a[keep] - c[keep]).max()))
    return worst


def check_onnx(hf_dir, onnx_dir, texts: Sequence[str], prompts: Sequence[str],
               max_new_tokens: int = 16, atol: float = LOGITS_ATOL, threads: int | None = None,
               batches: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """ONNX Runtime fp32 (and int8 when ``model_int8.onnx`` exists) against PyTorch.

    Returns the measured numbers and ``ok`` (fp32 logits within ``atol`` and greedy tokens
    equal); int8 is reported, not required to match (quantisation changes the numbers).
    """
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.deploy.onnx import INT8_FILE, ONNX_FILE, OrtCausalLM

    onnx_dir = Path(onnx_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    batches = list(batches) if batches is not None else heldout_batches(tok, texts)
    if not batches:
        raise ValueError("check_onnx: the held-out texts gave no token blocks")
    ort32 = OrtCausalLM(onnx_dir / ONNX_FILE, threads)
    pt = torch_logits_fn(model)
    diff = max_logits_diff(pt, lambda i, m: ort32.logits(i, m), batches)
    greedy = []
    for p in prompts:
        ids = tok(p, add_special_tokens=False)["input_ids"]
        a = torch_greedy(model, ids, max_new_tokens, tok.eos_token_id, tok.pad_token_id)
        b = ort32.greedy(ids, max_new_tokens, tok.eos_token_id)
        greedy.append({"prompt": p, "torch": a, "onnx": b, "equal": a == b})
    report: dict[str, Any] = {
        "logits_max_abs_diff": diff, "atol": atol,
        "greedy_equal": all(g["equal"] for g in greedy), "greedy": greedy,
        "heldout": {"torch": heldout_ce(pt, batches),
                    "onnx_fp32": heldout_ce(lambda i, m: ort32.logits(i, m), batches)},
    }
    if (onnx_dir / INT8_FILE).exists():
        ort8 = OrtCausalLM(onnx_dir / INT8_FILE, threads)
        report["heldout"]["onnx_int8"] = heldout_ce(lambda i, m: ort8.logits(i, m), batches)
        report["int8_ce_change"] = (report["heldout"]["onnx_int8"]["loss"]
                                    - report["heldout"]["torch"]["loss"])
        report["int8_greedy_equal"] = all(
            ort8.greedy(tok(g["prompt"], add_special_tokens=False)["input_ids"], max_new_tokens,
                        tok.eos_token_id) == g["torch"] for g in greedy)
    report["ok"] = diff <= atol and report["greedy_equal"]
    return report
