"""Local weights as a completion source: a Hugging Face folder or hub id, a LoRA adapter on its
base, or a training run's checkpoint (``conf/eval/model/{hf,lora,checkpoint}.yaml``).

One class for the three because they differ only in how the weights are found
(:mod:`distill.evaluation.loading`); generation is the same (:class:`~.hf.HFSource`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.config import ConfigError
from distill.evaluation.sources.base import CompletionSource, Role, name_from_path
from distill.evaluation.sources.hf import HFSource


class LocalModel(CompletionSource):
    """A causal LM loaded from local or hub weights.

    Args:
        path: an HF folder or hub id (a folder with ``adapter_config.json`` is an adapter).
        adapter: a LoRA adapter folder; its base is ``path``, else the adapter's own
            ``base_model_name_or_path``.
        checkpoint: a training run: its folder (uses ``<run>/student``, else exports
            ``checkpoints/last.ckpt``), an exported student folder, or a ``.ckpt`` file.
        tokenizer: another tokenizer folder; None = the model's.
        dtype: ``auto`` (bf16 on a GPU that has it, else fp32), ``float32``, ``bfloat16``,
            ``float16``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        chat: ``auto`` (chat prompts if the tokenizer has a chat template), true or false.
        trust_remote_code: passed to ``from_pretrained``.
        merge_lora: merge an adapter into its base before generating (faster).
        system_prompt: a system turn before every chat prompt (None: the template's default). A
            teacher that wrote its data under a system prompt is compared as it answered.
        name, role: as in :class:`CompletionSource`.
    """

    holds_weights = True

    def __init__(self, path: str | None = None, adapter: str | None = None,
                 checkpoint: str | None = None, tokenizer: str | None = None,
                 dtype: str = "auto", device: str = "auto", chat: Any = "auto",
                 trust_remote_code: bool = False, merge_lora: bool = True,
                 name: str | None = None, role: Role = "model", installed: dict | None = None,
                 system_prompt: str | None = None):
        super().__init__(name, role)
        if path is None and installed:  # a GGUF shipped in an installed package (the real-model presets)
            from distill.gguf_import import installed_gguf

            path = installed_gguf(**installed)
        if not (path or adapter or checkpoint):
            raise ConfigError("set one of path, adapter or checkpoint (the weights to evaluate), "
                              "e.g. model.path=<HF folder or hub id>, or pick another "
                              "eval/model preset (reference, answers, api)")
        self.path, self.adapter, self.checkpoint = path, adapter, checkpoint
        self.tokenizer_path, self.dtype, self.device_name = tokenizer, dtype, device
        self.chat, self.trust_remote_code, self.merge_lora = chat, bool(trust_remote_code), merge_lora
        self.system_prompt = system_prompt or None
        self.generator: HFSource | None = None
        self.weights_path = path  # what from_pretrained reads: path, or its converted folder for a .gguf

    @property
    def kind(self) -> str:  # which weights: recorded in summaries and shown in reports
        if self.adapter:
            return "lora"
        if self.checkpoint:
            return "checkpoint"
        if self.path and Path(self.path, "adapter_config.json").exists():
            return "lora"
        return "hf"

    def default_name(self) -> str:
        return name_from_path(self.path or self.adapter or self.checkpoint)

    def settings(self) -> dict[str, Any]:
        return {"path": self.path, "adapter": self.adapter, "checkpoint": self.checkpoint,
                "tokenizer": self.tokenizer_path, "dtype": self.dtype, "chat": self.chat,
                "trust_remote_code": self.trust_remote_code, "merge_lora": self.merge_lora,
                **({"system_prompt": self.system_prompt} if self.system_prompt else {})}

    def open(self, benchmark=None, work_dir: Path | None = None) -> None:
        if self.generator is None:
            from distill.evaluation.loading import load_hf_model
            from distill.gguf_import import converted_folder, is_gguf

            if is_gguf(self.path):  # converted once into a keyed HF folder (settings keep the file's path)
                self.weights_path = str(converted_folder(self.path, "model.path"))

            model, tokenizer, device = load_hf_model(self, work_dir)
            self.generator = HFSource(model, tokenizer, device, self.chat, self.system_prompt)

    def _loaded(self) -> HFSource:
        if self.generator is None:
            raise RuntimeError(f"model {self.name}: open() it before use (weights not loaded)")
        return self.generator

    @property
    def style(self) -> str:  # chat when the tokenizer has a template (known once loaded)
        return self._loaded().style

    @property
    def model(self):
        return self._loaded().model

    @property
    def tokenizer(self):
        return self._loaded().tokenizer

    @property
    def device(self) -> str:
        return self._loaded().device

    def generate(self, requests, settings, stop, style: str = "completion", **kwargs):
        return self._loaded().generate(requests, settings, stop, style=style)

    def close(self) -> None:
        if self.generator is not None:
            self.generator.close()
        self.generator = None
