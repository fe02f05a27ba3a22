"""What a run directory records about the models it really used.

``config_resolved.yaml`` (written by the Hydra callback when the job starts) says what was asked
for. Some of it is only known once the run is built: the keyed folder of a pretrained default
teacher, the tokenizer trained for a tiny model, the architecture of a model loaded from a folder or
hub id. :func:`record_models` writes those facts back into the file under each model's key, so
the saved config describes the models that were loaded rather than the preset they came from.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)

RESOLVED_CONFIG = "config_resolved.yaml"


def model_record(spec) -> dict:
    """``{name_or_path, tokenizer, from_scratch, config, config_sha256}`` of a model spec (no weights)."""
    config = spec.hf_config().to_diff_dict()
    config.pop("transformers_version", None)
    text = json.dumps(config, sort_keys=True, default=str)
    record = {"name_or_path": spec.name_or_path, "tokenizer": spec.tokenizer, "from_scratch": spec.from_scratch,
              "config": json.loads(text), "config_sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}
    if spec.gguf_file is not None:  # converted from a GGUF file: name the file the folder came from
        record["gguf_file"] = spec.gguf_file
    if spec.pruning_record is not None:  # cut from the teacher: which layers and channels stayed, and why
        record["pruning"] = spec.pruning_record
    return record


def record_models(out_dir: str | Path, parts, run_cfg=None) -> Path:
    """Add ``loaded:`` records for the student and teacher to ``<out_dir>/config_resolved.yaml``.

    The teacher's ``model.name_or_path`` and the student's ``tokenizer`` are set to what was
    loaded; a teacher loaded from a folder or hub id gets its real architecture recorded. Outside a
    Hydra app (notebooks, tests) the file is first written from ``run_cfg``.
    """
    path = Path(out_dir) / RESOLVED_CONFIG
    if path.exists():
        cfg = OmegaConf.load(path)
    else:
        try:
            cfg = OmegaConf.create(OmegaConf.to_container(run_cfg, resolve=True))
        except Exception:  # ${hydra:...} outside a Hydra app: keep what resolves
            cfg = OmegaConf.create(OmegaConf.to_container(run_cfg, resolve=False))
        path.parent.mkdir(parents=True, exist_ok=True)
    student = parts.module.student_spec
    teacher_spec = parts.teacher.spec  # declared by every Teacher (None: no local model)
    with open_dict(cfg):
        if "student" in cfg:
            cfg.student.tokenizer = student.tokenizer
            cfg.student.loaded = model_record(student)
        if teacher_spec is not None and "teacher" in cfg and "model" in cfg.teacher:
            cfg.teacher.model.name_or_path = teacher_spec.name_or_path
            cfg.teacher.loaded = model_record(teacher_spec)
    path.write_text(OmegaConf.to_yaml(cfg))
    return path
