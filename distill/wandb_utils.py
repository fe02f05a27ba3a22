"""Weights & Biases runs that compare cleanly across a sweep.

``logger=wandb`` builds its logger with :func:`wandb_logger`, which names each run after its
overrides (``loss.temperature=2,loss=jsd``: what makes it different from the defaults), groups the
runs of one ``-m`` sweep under the sweep directory's name and tags them with the teacher, student
and loss presets. ``train()`` logs the full resolved config; the module logs every loss component,
weight and the temperature (``train/*``) and the held-out metrics (``val/*``).
:class:`SampleGenerations` adds a table of student completions of fixed held-out prompts at each
validation.

Runs end cleanly: :class:`DistillWandbLogger` finishes the W&B run when Lightning finalises the
logger (exit code 1 when ``fit`` raised), so a failed sweep point neither hangs its process nor
leaves a run open for the next point launched in the same process. Only global rank zero creates a
run (Lightning's ``rank_zero_experiment``), so a multi-GPU run logs once.

``WANDB_MODE=offline`` works with no network; :func:`read_offline_run` reads a run's ``.wandb``
record file back (config, name, group, tags, history, summary, exit code).
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)

# Config groups whose chosen preset becomes a tag, e.g. ``loss:kd``.
TAG_GROUPS = ("teacher", "student", "loss", "experiment", "hardware")


# ------------------------------------------------------------------------------ run identity
@dataclass
class RunIdentity:
    name: str | None
    group: str | None
    tags: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)


def run_identity() -> RunIdentity:
    """Name, group, tags and task overrides of the current Hydra job (empty outside Hydra).

    name: in a multirun, the keys the sweep varies (as the run's directory, see
    :mod:`distill.run_names`); otherwise ``hydra.job.override_dirname`` (the overrides minus the
    keys listed in ``hydra.job.config.override_dirname.exclude_keys``), ``defaults`` when none.
    group: in a multirun, the sweep directory's name (one group per sweep).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return RunIdentity(None, None)
    hc = HydraConfig.get()
    multirun = hc.get("mode") == RunMode.MULTIRUN
    name = hc.job.get("override_dirname") or "defaults"
    if multirun:
        import sys

        from distill.run_names import run_name, swept_keys

        exclude = list(hc.job.config.override_dirname.get("exclude_keys") or [])
        name = run_name(list(hc.overrides.get("task") or []), swept_keys(sys.argv[1:], hc.sweeper.get("params")),
                        exclude, fallback=name)
    group = Path(str(hc.sweep.dir)).name if multirun else None
    choices = hc.runtime.get("choices") or {}
    tags = [f"{g}:{choices[g]}" for g in TAG_GROUPS if choices.get(g) not in (None, "null")]
    return RunIdentity(name, group, tags, list(hc.overrides.get("task") or []))


class DistillWandbLogger(WandbLogger):
    """``WandbLogger`` that finishes its run when Lightning finalises it (end of fit or on error).

    Lightning's own logger leaves the run open, and the next ``WandbLogger`` in the same process
    (the next point of a sweep) would silently log into it.
    """

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None and not getattr(self, "_finished", False):
            self._finished = True
            self._experiment.finish(exit_code=0 if status == "success" else 1)


def wandb_logger(project: str = "distill", entity: str | None = None, save_dir: str = ".",
                 name: str | None = None, group: str | None = None, tags: Sequence[str] = (),
                 mode: str | None = None, log_model: bool | str = False, **kwargs: Any) -> DistillWandbLogger:
    """The ``logger=wandb`` logger; ``name``/``group`` null = derived from the Hydra job (see :func:`run_identity`).

    ``mode``: online | offline | disabled; null leaves it to ``WANDB_MODE`` (default online).
    Extra keyword arguments go to ``wandb.init``.
    """
    import wandb

    if wandb.run is not None:
        # Left open by an earlier job of this process that failed before Lightning could finalise it.
        log.warning("finishing W&B run %s left open by a previous job", wandb.run.name)
        wandb.finish(exit_code=1)
    ident = run_identity()
    if mode is not None:
        kwargs["mode"] = mode
    config = dict(kwargs.pop("config", None) or {})
    config.setdefault("overrides", ident.overrides)  # distill-compare reads the swept keys from here
    Path(save_dir).mkdir(parents=True, exist_ok=True)  # wandb falls back to /tmp if it is missing
    return DistillWandbLogger(project=project, entity=entity, save_dir=save_dir, name=name or ident.name,
                              group=group or ident.group, tags=sorted({*ident.tags, *tags}),
                              log_model=log_model, config=config, **kwargs)


# ------------------------------------------------------------------------------ sample table
class SampleGenerations(L.Callback):
    """At each validation, greedy-decode the student on a few fixed held-out prompts and log a
    W&B table ``val/samples`` (step, prompt, completion, reference), rows accumulating over training.

    Args:
        num_prompts: how many held-out examples to take prompts from (the first ones, so every run
            of a sweep sees the same prompts).
        prompt_tokens: tokens of each example used as the prompt; examples whose labels mask a
            prompt (chat data) use that prompt instead.
        max_new_tokens: generation budget per prompt.
        prompts: explicit prompt strings instead of held-out examples.
        key: the W&B key of the table.

    Does nothing without a W&B logger. Generates on global rank zero only, except under sharded
    strategies (FSDP, DeepSpeed), where every rank must take part in each forward pass.
    """

    def __init__(self, num_prompts: int = 4, prompt_tokens: int = 32, max_new_tokens: int = 48,
                 prompts: Sequence[str] | None = None, key: str = "val/samples"):
        super().__init__()
        if num_prompts < 1 or prompt_tokens < 1 or max_new_tokens < 1:
            raise ValueError("callbacks.wandb_samples: num_prompts, prompt_tokens and max_new_tokens must be >= 1 "
                             f"(got {num_prompts}, {prompt_tokens}, {max_new_tokens})")
        self.num_prompts, self.prompt_tokens, self.max_new_tokens = num_prompts, prompt_tokens, max_new_tokens
        self.prompts = list(prompts) if prompts else None
        self.key = key
        self.rows: list[list] = []
        self._fixed: list[tuple[list[int], str]] | None = None

    @staticmethod
    def _wandb(trainer: L.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def _prompts(self, trainer: L.Trainer) -> list[tuple[list[int], str]]:
        """``(prompt ids, reference continuation)`` pairs, fixed for the whole run."""
        if self._fixed is not None:
            return self._fixed
        tok = trainer.datamodule.tokenizer
        if self.prompts:
            self._fixed = [(tok(p, add_special_tokens=False)["input_ids"], "") for p in self.prompts]
            return self._fixed
        examples = getattr(getattr(trainer.datamodule, "val_set", None), "examples", None) or []
        fixed = []
        for ex in examples[: self.num_prompts]:
            ids, labels = list(ex["input_ids"]), list(ex.get("labels") or ex["input_ids"])
            # chat data: the masked prefix is the prompt; plain text: the first prompt_tokens tokens
            n = next((i for i, lab in enumerate(labels) if lab != -100), 0)
            n = n or min(self.prompt_tokens, max(1, len(ids) // 2))  # leave some text as the reference
            reference = tok.decode(ids[n: n + self.max_new_tokens], skip_special_tokens=True)
            fixed.append((ids[:max(n, 1)], reference))
        self._fixed = fixed
        return fixed

    def generate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[list]:
        import torch

        tok = trainer.datamodule.tokenizer
        student = pl_module.student
        rows = []
        with torch.no_grad():
            for ids, reference in self._prompts(trainer):
                x = torch.tensor([ids], device=pl_module.device)
                out = student.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                       max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id)
                completion = tok.decode(out[0, x.shape[1]:], skip_special_tokens=True)
                rows.append([trainer.global_step, tok.decode(ids, skip_special_tokens=True), completion, reference])
        return rows

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = self._wandb(trainer)
        if logger is None or trainer.sanity_checking:
            return
        sharded = any(s in type(trainer.strategy).__name__.lower() for s in ("fsdp", "deepspeed"))
        if not (trainer.is_global_zero or sharded):
            return
        rows = self.generate(trainer, pl_module)
        if trainer.is_global_zero:
            self.rows.extend(rows)
            logger.log_table(self.key, columns=["step", "prompt", "completion", "reference"], data=self.rows,
                             step=trainer.global_step)


# ------------------------------------------------------------------------------ offline records
# A ``.wandb`` file is a LevelDB-style log (https://github.com/google/leveldb/blob/main/doc/log_format.md)
# with its own header: ident ":W&B", magic 0xBEE1, version 0; then 32 KiB blocks of records
# ``crc32(type + data) u32 | length u16 | type u8 | data``, each data a ``wandb_internal_pb2.Record``.
# wandb 0.31 ships no Python reader (its Go core writes and syncs these files), so this is one.
_HEADER = struct.Struct("<4sHB")
_RECORD = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_records(path: str | Path):
    """Yield every ``wandb_internal_pb2.Record`` of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:7]!r})")
    pos, pending = _HEADER.size, b""
    while pos + _RECORD.size <= len(data):
        if _BLOCK - pos % _BLOCK < _RECORD.size:  # block trailer: zero padding
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = _RECORD.unpack_from(data, pos)
        if kind == 0 and length == 0:  # preallocated tail of a file still being written
            break
        payload = data[pos + _RECORD.size: pos + _RECORD.size + length]
        if zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        pos += _RECORD.size + length
        if kind == _FIRST:
            pending = payload
            continue
        if kind == _MIDDLE:
            pending += payload
            continue
        if kind == _LAST:
            payload, pending = pending + payload, b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _set(target: dict, item, value) -> None:
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = value


def _history_value(item):
    kind = item.WhichOneof("value")
    if kind is None or kind == "none":
        return json.loads(item.value_json) if item.value_json else None
    value = getattr(item, kind)
    return json.loads(value) if kind == "json" else value


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """What an offline run recorded: ``name, group, tags, project, config, history, summary, exit_code``.

    ``path``: a ``.wandb`` file or a directory holding exactly one (searched recursively).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.wandb"))
        if len(files) != 1:
            raise FileNotFoundError(f"{path}: expected one .wandb file, found {[str(f) for f in files]}")
        path = files[0]
    run: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "exit_code": None}
    for rec in iter_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.update(name=r.display_name, group=r.run_group, tags=list(r.tags), project=r.project, id=r.run_id)
            for item in r.config.update:
                _set(run["config"], item, json.loads(item.value_json))
        elif kind == "config":
            for item in rec.config.update:
                _set(run["config"], item, json.loads(item.value_json))
        elif kind == "summary":
            for item in rec.summary.update:
                _set(run["summary"], item, json.loads(item.value_json))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in rec.history.item:
                _set(row, item, _history_value(item))
            run["history"].append(row)
        elif kind == "exit":
            run["exit_code"] = rec.exit.exit_code
    return run
