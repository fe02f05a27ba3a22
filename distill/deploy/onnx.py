"""ONNX export of a decoder with past key values, int8 dynamic quantisation, and an ONNX Runtime
runner that the checks and the speed table share.

Exporter: PyTorch's own ``torch.onnx.export`` on a thin wrapper that turns the model's cache
object into flat tensors, named as optimum names them (``input_ids``, ``attention_mask``,
``position_ids``, ``past_key_values.{i}.key|value`` -> ``logits``, ``present.{i}.key|value``).
Why not optimum's exporter: ``optimum-onnx`` (0.1.0, the newest release) requires
``transformers<4.58`` and fails to import with this project's transformers 5.x
(huggingface/optimum-onnx#114); ``onnxruntime-genai``'s model builder handles transformers 5 but
emits ``GroupQueryAttention``, whose CPU kernel needs a head size divisible by 16 (the default
student's is 24). The wrapper only names inputs and outputs; the graph is torch's.

Quantisation: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations
quantised on the fly), the standard CPU recipe.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
META_FILE = "onnx_export.json"
DEFAULT_OPSET = 18


def _require_ort():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        raise ImportError("ONNX export needs `pip install -e \".[deploy]\"` (onnx, onnxruntime)"
                          ) from exc
    return onnxruntime


def _kv_wrapper(model):
    """``forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present)``."""
    import torch
    from transformers import DynamicCache

    n_layers = int(model.config.num_hidden_layers)

    class KVWrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.model.config)
            for i in range(n_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, past_key_values=cache, use_cache=True)
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    return KVWrapper()


def kv_shape(config) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a decoder config."""
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return int(config.num_hidden_layers), kv, head_dim


def export_onnx(hf_dir: str | Path, out_dir: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export the HF causal LM in ``hf_dir`` to ``out_dir/model.onnx`` (fp32, with past key values).

    ``out_dir`` also gets the config and tokenizer, so it is self-contained, and
    ``onnx_export.json`` with the input/output names and cache shape the runner needs.
    """
    _require_ort()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hf_dir, out = Path(hf_dir), Path(out_dir)
    if not (hf_dir / "config.json").exists():
        raise FileNotFoundError(f"{hf_dir}/config.json not found: pass an exported HF folder "
                                f"(distill-export writes one)")
    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    n_layers, kv_heads, head_dim = kv_shape(config)
    names = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{k}" for i in range(n_layers) for k in ("key", "value")]
    out_names = ["logits"] + [f"present.{i}.{k}" for i in range(n_layers) for k in ("key", "value")]
    dynamic = {"input_ids": {0: "batch_size", 1: "sequence_length"},
               "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
               "position_ids": {0: "batch_size", 1: "sequence_length"},
               "logits": {0: "batch_size", 1: "sequence_length"}}
    for n in names[3:]:
        dynamic[n] = {0: "batch_size", 2: "past_sequence_length"}
    for n in out_names[1:]:
        dynamic[n] = {0: "batch_size", 2: "total_sequence_length"}
    # Trace with a non-empty past so the cache concatenation is in the graph; an empty past
    # (the first step) runs through the same graph.
    b, t, p = 2, 4, 3
    ids = torch.randint(0, int(config.vocab_size), (b, t))
    mask = torch.ones(b, p + t, dtype=torch.long)
    pos = torch.arange(p, p + t).unsqueeze(0).expand(b, -1)
    past = [torch.zeros(b, kv_heads, p, head_dim) for _ in range(2 * n_layers)]
    start = time.perf_counter()
    with torch.no_grad():
        # dynamo=False: the TorchScript exporter needs no onnxscript and traces the wrapper's
        # cache handling as plain tensor ops.
        torch.onnx.export(_kv_wrapper(model), (ids, mask, pos, *past), str(out / ONNX_FILE),
                          input_names=names, output_names=out_names, dynamic_axes=dynamic,
                          opset_version=int(opset), dynamo=False)
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(hf_dir).save_pretrained(out)
    meta = {"file": ONNX_FILE, "opset": int(opset), "inputs": names, "outputs": out_names,
            "num_layers": n_layers, "num_kv_heads": kv_heads, "head_dim": head_dim,
            "vocab_size": int(config.vocab_size), "source": str(hf_dir),
            "exporter": f"torch.onnx.export (TorchScript) torch {torch.__version__}",
            "seconds": round(time.perf_counter() - start, 2)}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    log.info("ONNX export -> %s (%.1fs)", out / ONNX_FILE, meta["seconds"])
    return out / ONNX_FILE


def quantize_int8(onnx_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Dynamic int8 quantisation (weights int8, activations per batch) with ONNX Runtime."""
    _require_ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = Path(onnx_path)
    dst = Path(out_path) if out_path else src.with_name(INT8_FILE)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    meta_file = src.parent / META_FILE
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        meta["int8_file"] = dst.name
        meta_file.write_text(json.dumps(meta, indent=2))
    log.info("int8 dynamic quantisation -> %s", dst)
    return dst


class OrtCausalLM:
    """An exported model in an ONNX Runtime session: full-sequence logits and greedy decoding
    with the key/value cache, the two things the checks and the speed table need."""

    def __init__(self, onnx_path: str | Path, threads: int | None = None):
        ort = _require_ort()
        path = Path(onnx_path)
        meta_file = path.parent / META_FILE
        if not meta_file.exists():
            raise FileNotFoundError(f"{meta_file} not found: export with distill.deploy.onnx."
                                    f"export_onnx (it records the cache layout)")
        self.meta = json.loads(meta_file.read_text())
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path = path

    def run(self, input_ids, attention_mask, position_ids, past: Sequence[Any] | None):
        import numpy as np

        b = input_ids.shape[0]
        if past is None:
            shape = (b, self.meta["num_kv_heads"], 0, self.meta["head_dim"])
            past = [np.zeros(shape, dtype=np.float32)] * (2 * self.meta["num_layers"])
        feed = {"input_ids": input_ids.astype(np.int64),
                "attention_mask": attention_mask.astype(np.int64),
                "position_ids": position_ids.astype(np.int64)}
        feed.update(zip(self.meta["inputs"][3:], past))
        out = self.session.run(None, feed)
        return out[0], out[1:]

    def logits(self, input_ids, attention_mask=None):
        """Logits ``(batch, seq, vocab)`` for right-padded ``input_ids`` (numpy int arrays)."""
        import numpy as np

        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        pos = np.clip(np.cumsum(mask, axis=-1) - 1, 0, None)
        return self.run(ids, mask, pos, None)[0]

    def greedy(self, prompt_ids: Sequence[int], max_new_tokens: int,
               eos_token_id: int | None = None) -> list[int]:
        """Greedy continuation of one prompt (the cache is fed back each step)."""
        import numpy as np

        ids = np.asarray([list(prompt_ids)], dtype=np.int64)
        mask = np.ones_like(ids)
        pos = np.arange(ids.shape[1], dtype=np.int64)[None]
        logits, past = self.run(ids, mask, pos, None)
        new: list[int] = []
        for _ in range(int(max_new_tokens)):
            nxt = int(np.argmax(logits[0, -1]))
            new.append(nxt)
            if eos_token_id is not None and nxt == eos_token_id:
                break
            step = np.asarray([[nxt]], dtype=np.int64)
            mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
            pos = np.asarray([[mask.shape[1] - 1]], dtype=np.int64)
            logits, past = self.run(step, mask, pos, past)
        return new
