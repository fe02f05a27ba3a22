"""``student=pruned``: a student cut out of the teacher's weights at start-up, then healed by distillation.

:class:`PrunedSpec` is a :class:`~distill.models.ModelSpec` whose weights come from the teacher
through :func:`distill.pruning.prune`. The cut runs once in :meth:`PrunedSpec.prepare` on a
calibration batch of the run's own training data, and is kept as an ordinary Hugging Face folder
``<dir>/pruned-<layers>L-<key>`` (weights, the teacher's tokenizer, ``pruning.json``), keyed by the
teacher, the spec and the calibration tokens. So the CE-only baseline and later runs load the same
student with ``from_pretrained``, LoRA and export work unchanged, and ``pruning_record`` (what was
kept and why) is on the spec for ``config_resolved.yaml`` and the model card.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from distill.config import ConfigError
from distill.data.datamodule import collate
from distill.gguf_import import cache_dir
from distill.models import ModelSpec
from distill.pruning import PruneSpec, prune

log = logging.getLogger(__name__)

RECORD = "pruning.json"


class PrunedSpec(ModelSpec):
    """A student pruned from the teacher (depth: layers; width: MLP channels).

    Args:
        teacher: the teacher's model spec (``${teacher.model}``); a model with weights to cut, not a
            cache, a remote server or a model built from config.
        depth: ``{method, keep, every, num_layers}`` of :class:`distill.pruning.PruneSpec`.
        width: ``{intermediate_size}`` (null: every MLP channel stays).
        calibration_examples: training examples the importances are measured on (block influence,
            MLP width), spread evenly over the training split.
        dir: where pruned students are kept (default ``<cache>/pruned``).
        dtype, lora, gradient_checkpointing, tokenizer: as for :class:`~distill.models.ModelSpec`;
            the tokenizer defaults to the teacher's.
    """

    def __init__(self, teacher: ModelSpec | None, depth: dict | None = None, width: dict | None = None,
                 calibration_examples: int = 16, dir: str | None = None, dtype: str = "float32",
                 lora: dict | None = None, gradient_checkpointing: bool = False, tokenizer: str | None = None,
                 role: str = "student"):
        if not isinstance(teacher, ModelSpec):
            raise ConfigError("student=pruned cuts the student out of the teacher's weights, so the teacher must be a "
                              "model (teacher.model): use teacher=smollm2-135m-instruct, or teacher=hf "
                              "teacher.model.name_or_path=<folder, hub id or .gguf>. A cached, remote or absent "
                              "teacher has no weights to cut.")
        if teacher.from_scratch:
            raise ConfigError("student=pruned: the teacher is built from config (random weights, or pretrained later "
                              "by this run), so there is nothing to cut yet. Point teacher.model.name_or_path at a "
                              "trained model (a folder, hub id or .gguf file).")
        if calibration_examples < 1:
            raise ConfigError(f"student.calibration_examples={calibration_examples}: must be >= 1")
        # The base class wants a source; the weights come from the teacher (prepare), so the placeholder
        # config is cleared right after.
        super().__init__(config={"model_type": "pruned"}, tokenizer=tokenizer, dtype=dtype, lora=lora,
                         gradient_checkpointing=gradient_checkpointing, role=role)
        self.config_kwargs = None  # not built from config: from the teacher's weights
        self.teacher_spec = teacher
        teacher.role = "teacher"
        self.prune_spec = PruneSpec(**(depth or {}), **(width or {}))
        self.calibration_examples = calibration_examples
        self.dir = Path(dir) if dir else cache_dir() / "pruned"
        self.pruning_record: dict | None = None

    # ----------------------------------------------------------------- config-only facts
    @property
    def tokenizer(self) -> str | None:
        return self._tokenizer or self.teacher_spec.tokenizer

    @tokenizer.setter
    def tokenizer(self, value: str | None) -> None:
        self._tokenizer = value

    @property
    def from_scratch(self) -> bool:
        return False

    def hf_config(self) -> PretrainedConfig:
        """The pruned folder's config once cut; before, the teacher's config with the planned sizes.

        Block influence picks *which* layers only on the data, but the count is known, so the shapes
        the checks read (vocabulary, hidden size, layers) are right before any weights load.
        """
        if self._name_or_path is not None:
            return AutoConfig.from_pretrained(self._name_or_path)
        config = self.teacher_spec.hf_config()
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        n = text.num_hidden_layers
        if self.prune_spec.method == "block_influence":
            kept = self.prune_spec.kept_layers(n, [0.0] * n)  # the count only: which ones, the data decides
        else:
            kept = self.prune_spec.kept_layers(n)  # raises on a layer index the teacher lacks
        text.num_hidden_layers = len(kept)
        if getattr(text, "layer_types", None) is not None:
            text.layer_types = [text.layer_types[i] for i in kept]
        if self.prune_spec.intermediate_size is not None:
            self.prune_spec.check_width(text.intermediate_size)
            text.intermediate_size = self.prune_spec.intermediate_size
        return config

    # ----------------------------------------------------------------- the cut, once
    def prepare(self, datamodule) -> None:
        """Cut the student from the teacher (or find the cut of an earlier run).

        Args:
            datamodule: the run's :class:`~distill.data.datamodule.DistillDataModule`, connected to the
                tokenizer; its training split gives the calibration batch. May be None when the spec
                needs no calibration (an explicit ``keep`` or ``uniform`` without width pruning).
        """
        if self._name_or_path is not None:
            return
        ids = mask = None
        if self.prune_spec.needs_calibration:
            if datamodule is None:
                raise RuntimeError(f"student=pruned by {self.prune_spec.method} / MLP width ranks the teacher on the "
                                   "run's data: call spec.prepare(datamodule) before build() (distill.build does)")
            ids, mask = self.calibration_batch(datamodule)
        folder = self.dir / f"pruned-{self.hf_config().num_hidden_layers}L-{self.key(ids)}"
        if not (folder / RECORD).exists():
            self._cut(folder, ids, mask)
        else:
            log.info("student=pruned: loading the cut of an earlier run, %s", folder)
        self._name_or_path = str(folder)
        self.pruning_record = json.loads((folder / RECORD).read_text())

    def calibration_batch(self, datamodule) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of ``calibration_examples`` training examples, spread evenly."""
        examples = datamodule.examples("train")
        n = min(self.calibration_examples, len(examples))
        picked = [examples[i * len(examples) // n] for i in range(n)]
        pad = getattr(datamodule.tokenizer, "pad_token_id", None)
        batch = collate(picked, 0 if pad is None else pad)
        return batch["input_ids"], batch["attention_mask"]

    def key(self, calibration_ids: torch.Tensor | None) -> str:
        """What determines the cut: the teacher (its folder or id and config), the spec, the data, the dtype."""
        teacher_config = self.teacher_spec.hf_config().to_diff_dict()
        teacher_config.pop("transformers_version", None)
        parts = {"teacher": str(self.teacher_spec.name_or_path), "teacher_config": teacher_config,
                 "spec": vars(self.prune_spec), "dtype": self.dtype,
                 "calibration": (hashlib.sha256(calibration_ids.numpy().tobytes()).hexdigest()
                                 if calibration_ids is not None else None)}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _cut(self, folder: Path, ids: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        log.info("student=pruned: cutting %s out of the teacher %s (once; kept in %s)", self.prune_spec.method,
                 self.teacher_spec.name_or_path, folder)
        teacher = self.teacher_spec.build()
        student, record = prune(teacher, self.prune_spec, ids, mask)
        del teacher
        record["teacher"] = str(self.teacher_spec.name_or_path)
        log.info("student=pruned: kept layers %s of %d, MLP width %s, %d -> %d parameters", record["kept_layers"],
                 record["teacher_layers"], record["intermediate_size"], record["parameters"]["teacher"],
                 record["parameters"]["student"])
        # Written whole under a temporary name, then renamed: a crash leaves no folder a later run would load.
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            student.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(self.tokenizer).save_pretrained(tmp)
            (tmp / RECORD).write_text(json.dumps(record, indent=2))
            folder.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, folder)
            except OSError:  # another run finished the same cut first
                if not (folder / RECORD).exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def __repr__(self) -> str:
        return f"PrunedSpec({self.prune_spec.method} of {self.teacher_spec!r})"

    # ----------------------------------------------------------------- weights
    def build(self, attn_implementation: str | None = None) -> torch.nn.Module:
        """Load the cut student (cutting it first when no calibration data is needed)."""
        if self._name_or_path is None:
            self.prepare(None)
        return super().build(attn_implementation)
