"""Building students and teachers: ``from_pretrained`` for real models, ``from_config`` for tiny ones.

A :class:`ModelSpec` is what a ``student/`` or ``teacher/`` config instantiates. It is cheap: it
holds settings and reads only the model's *config* (no weights) until :meth:`ModelSpec.build` is
called, so composing and validating a config never loads a model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from distill.config import ConfigError
from distill.gguf_import import converted_folder, installed_gguf, is_gguf
from distill.types import ModelInfo

log = logging.getLogger(__name__)

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


@dataclass
class LoraSettings:
    """PEFT LoRA settings (Hu et al., 2021); ``target_modules`` name the linear layers to adapt."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"student.lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"student.lora.dropout must be in [0, 1), got {self.dropout}")


class ModelSpec:
    """How to build one causal LM.

    Args:
        name_or_path: hub id or local folder for ``from_pretrained``. Exactly one of this and
            ``config`` is set (or both, for a model built from ``config`` and cached at ``name_or_path``).
        config: keyword arguments of a Hugging Face config (with ``model_type``) for ``from_config``:
            tiny models for tests and the embedded default.
        tokenizer: tokenizer id or folder (defaults to ``name_or_path``; None for a model built
            from config means the run's tokenizer).
        tokenizer_build: settings to train a byte-level BPE when ``tokenizer`` is None or missing
            (see :func:`distill.data.tokenizer.load_tokenizer`).
        dtype: "float32", "bfloat16", "float16" or "auto".
        quantization: None, "4bit" (NF4, QLoRA) or "8bit" (bitsandbytes; needs a GPU).
        lora: LoRA settings, or None for a full fine-tune.
        gradient_checkpointing: trade compute for activation memory.
        trust_remote_code: passed to ``from_pretrained``.
        gguf_file: a llama.cpp ``.gguf`` file (a ``name_or_path`` ending in ``.gguf`` is the same). It is
            converted once into a Hugging Face folder in the cache, keyed by its content
            (:mod:`distill.gguf_import`), the first time its config, tokenizer or weights are needed;
            ``name_or_path`` and ``tokenizer`` then name that folder.
        installed: ``{package, file, fallback}``: a GGUF file shipped in an installed Python package
            (:func:`distill.gguf_import.installed_gguf`), else the hub id ``fallback``. Used only when
            ``name_or_path`` and ``gguf_file`` are unset, so an override of either wins.
        role: "student", "teacher" or "model"; a student is built in train mode.
    """

    #: What was cut from the teacher to make this model (:class:`distill.pruned.PrunedSpec`); None here.
    pruning_record: dict | None = None

    def __init__(self, name_or_path: str | None = None, config: dict | None = None, tokenizer: str | None = None,
                 tokenizer_build: dict | None = None, dtype: str = "float32", quantization: str | None = None,
                 lora: dict | None = None, gradient_checkpointing: bool = False, trust_remote_code: bool = False,
                 gguf_file: str | None = None, installed: dict | None = None, role: str = "model"):
        if name_or_path is None and gguf_file is None and installed:
            name_or_path = installed_gguf(**installed)
        if is_gguf(name_or_path):
            if gguf_file is not None:
                raise ConfigError(f"{role}: name_or_path={name_or_path!r} is a GGUF file and gguf_file={gguf_file!r} "
                                  "names another; set one of them")
            name_or_path, gguf_file = None, name_or_path
        # Converted lazily (name_or_path below): instantiating a spec stays cheap.
        self.gguf_file = str(gguf_file) if gguf_file is not None else None
        if name_or_path is None and config is None and gguf_file is None:
            raise ValueError(f"{role}: set name_or_path (hub id or local folder) or config (to build from scratch)")
        if dtype not in DTYPES:
            raise ValueError(f"{role}.dtype: unknown {dtype!r}; use one of {sorted(DTYPES)}")
        if quantization not in (None, "4bit", "8bit"):
            raise ValueError(f"{role}.quantization: unknown {quantization!r}; use null, '4bit' or '8bit'")
        self._name_or_path, self.config_kwargs, self.role = name_or_path, dict(config) if config else None, role
        # None for a model built from config: the run's tokenizer (the student's, trained from
        # ``tokenizer_build`` when needed); distill.build fills in the folder it loaded.
        self._tokenizer = tokenizer
        self.tokenizer_build = dict(tokenizer_build) if tokenizer_build else None
        self.dtype, self.quantization = dtype, quantization
        self.lora = LoraSettings(**lora) if lora else None
        self.gradient_checkpointing, self.trust_remote_code = gradient_checkpointing, trust_remote_code

    # ----------------------------------------------------------------- where the model is
    @property
    def name_or_path(self) -> str | None:
        """Hub id or folder; for a GGUF file, its converted folder (converted on first access)."""
        if self._name_or_path is None and self.gguf_file is not None:
            self._name_or_path = str(converted_folder(self.gguf_file, f"{self.role}.gguf_file"))
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: str | None) -> None:
        self._name_or_path = value

    @property
    def tokenizer(self) -> str | None:
        """Tokenizer id or folder: the one set, else the model's own (a GGUF file's converted folder)."""
        return self._tokenizer or self.name_or_path

    @tokenizer.setter
    def tokenizer(self, value: str | None) -> None:
        self._tokenizer = value

    def prepare(self, datamodule) -> None:
        """One-off work that needs the run's data before the weights are built (a pruned student
        ranks the teacher's layers on it); nothing for a model loaded or built as it is."""

    # ----------------------------------------------------------------- config-only facts
    @property
    def from_scratch(self) -> bool:
        """True when the weights come from ``config`` (random init) rather than a checkpoint."""
        return self.config_kwargs is not None and self.gguf_file is None and not (
            self._name_or_path and Path(self._name_or_path).exists())

    def hf_config(self) -> PretrainedConfig:
        """The model's config, read without weights (local folder, hub cache, or ``config``)."""
        if not self.from_scratch:
            try:
                return AutoConfig.from_pretrained(self.name_or_path, trust_remote_code=self.trust_remote_code)
            except (OSError, ValueError) as e:
                raise FileNotFoundError(
                    f"{self.role}.name_or_path={self.name_or_path!r}: no model config found (not a local folder "
                    f"with config.json, and not reachable on the hub: {e.__class__.__name__}). Fix the path, "
                    "or download the model first.") from e
        kwargs = dict(self.config_kwargs)
        model_type = kwargs.pop("model_type", None)
        if model_type is None:
            raise ValueError(f"{self.role}.config needs a model_type (e.g. llama)")
        return AutoConfig.for_model(model_type, **kwargs)

    def info(self) -> ModelInfo:
        return ModelInfo.from_hf_config(self.hf_config())

    # ----------------------------------------------------------------- weights
    def build(self, attn_implementation: str | None = None) -> torch.nn.Module:
        """Load or create the model (and wrap it with LoRA when configured)."""
        kwargs: dict[str, Any] = {}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        dtype = DTYPES[self.dtype]
        if self.from_scratch:
            log.info("Building %s from config (%s)", self.role, self.config_kwargs.get("model_type"))
            model = AutoModelForCausalLM.from_config(self.hf_config(), dtype=None if dtype == "auto" else dtype, **kwargs)
        else:
            if self.quantization:
                kwargs["quantization_config"] = self._quantization_config()
            log.info("Loading %s from %s", self.role, self.name_or_path)
            model = AutoModelForCausalLM.from_pretrained(self.name_or_path, dtype=dtype,
                                                         trust_remote_code=self.trust_remote_code, **kwargs)
        if self.gradient_checkpointing:
            # Non-reentrant checkpointing (PyTorch's recommendation) backpropagates into the
            # checkpointed blocks even when no input requires grad.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:
            model = self._wrap_lora(model)
            if self.gradient_checkpointing:
                # The LoRA pitfall: the embeddings are frozen, so the checkpointed blocks' inputs
                # need not require grad and reentrant checkpointing would give the adapters no
                # gradient. Recent peft does this itself; older versions and other paths do not.
                model.enable_input_require_grads()
        if self.role == "student":
            # from_pretrained returns a model in eval mode: dropout and LoRA dropout would be off, and
            # transformers checkpoints activations only `if self.gradient_checkpointing and
            # self.training`, so gradient_checkpointing would silently save nothing. Teachers stay as
            # loaded and are put in eval mode by their owner (distill.teachers.hf).
            model.train()
        return model

    def _quantization_config(self):
        if not torch.cuda.is_available():
            raise RuntimeError(f"{self.role}.quantization={self.quantization!r} needs a CUDA GPU (bitsandbytes "
                               "k-bit kernels); use hardware=cpu without quantization on this machine")
        from transformers import BitsAndBytesConfig

        if self.quantization == "4bit":
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
        return BitsAndBytesConfig(load_in_8bit=True)

    def _wrap_lora(self, model):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if self.quantization:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=self.gradient_checkpointing)
        cfg = LoraConfig(r=self.lora.r, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                         target_modules=list(self.lora.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log.info("LoRA r=%d on %s: %d of %d parameters train (%.2f%%)", self.lora.r, self.lora.target_modules,
                 trainable, total, 100 * trainable / max(total, 1))
        return model

    def __repr__(self) -> str:
        where = self._name_or_path or self.gguf_file or (self.config_kwargs or {}).get("model_type")
        return f"{type(self).__name__}({self.role}: {where})"


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.Tensor]:
    """The transformer body (returns final hidden states) and the ``lm_head`` weight of a causal LM."""
    base = _unwrapped(model)
    return base.get_decoder(), base.get_output_embeddings().weight


# Config keys of architectures whose logits are not just ``h @ W^T`` (Gemma 2/3 soft-capping,
# Cohere / Granite scaling): fused losses, which apply the head themselves, would get them wrong.
_HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def head_is_plain_linear(model: torch.nn.Module) -> bool:
    """True when the model's logits are exactly ``last_hidden @ lm_head.weight^T``."""
    base = _unwrapped(model)
    head = base.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return False
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    return all(getattr(config, key, None) in (None, 1, 1.0) for key in _HEAD_TRANSFORMS)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
