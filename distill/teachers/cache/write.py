"""Writing a teacher's cache for a run's data: the one path ``distill-cache-logits`` and a cached
teacher that writes on first use (``teacher=cached_auto``) share.

:func:`keyed_path` names the folder (:mod:`~distill.teachers.cache.key`), :func:`write_cache` fills
it: the teacher runs once over the chosen splits (progress bar), shards are resumable and the
manifest is replaced atomically (:mod:`~distill.teachers.cache.writer`), so an interrupted first
run is finished, not restarted, by the next.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.config import ConfigError
from distill.teachers.cache.fingerprint import data_fingerprint, teacher_fingerprint, tokenizer_fingerprint
from distill.teachers.cache.key import cache_folder_name, cache_key, selection_key, teacher_identity
from distill.teachers.cache.reader import CacheReader
from distill.teachers.cache.teacher_pass import PassStats, cache_split
from distill.teachers.cache.writer import CacheWriter, select_visited

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


@dataclass
class WriteSettings:
    """How a cache is written (``cache.*`` of ``distill-cache-logits``; ``teacher.write`` of a cached teacher).

    ``max_steps``: None (or < 1) caches the whole train split; N only the examples the first N
    steps read. ``seed`` seeds a teacher built from config and the sampled mode's draws.
    """

    mode: str = "topk"
    k: int = 64
    splits: tuple[str, ...] = SPLITS
    max_steps: int | None = None
    encoding: dict = field(default_factory=dict)
    shard_size: int = 1024
    batch_size: int = 32
    device: str = "auto"
    progress: bool = True
    seed: int = 0
    proposal_temperature: float = 1.0
    overwrite: bool = False

    def __post_init__(self):
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise ConfigError(f"cache.splits: unknown split(s) {bad}; use train and/or val")
        if self.max_steps is not None and self.max_steps < 1:
            self.max_steps = None  # an epoch-based run (trainer.max_steps=-1) reads the whole split

    @property
    def sampling(self) -> dict | None:
        return {"seed": self.seed, "proposal_temperature": self.proposal_temperature} if self.mode == "sampled" else None


def split_fingerprints(datamodule) -> dict[str, dict]:
    """:func:`data_fingerprint` of the run's train and val splits (what a key and a manifest record)."""
    return {s: data_fingerprint(datamodule.examples(s), datamodule.seq_len, getattr(datamodule, "source", None), s)
            for s in SPLITS}


def keyed_path(root: str | Path, label: str | None, teacher, datamodule, settings: WriteSettings,
               data: dict[str, dict] | None = None, mode: str | None = None, k: int | None = None) -> Path:
    """``<root>/<label>-<key>-<mode>-k<k>`` for ``teacher`` on this run's tokenizer and data."""
    mode, k = mode or settings.mode, int(k or settings.k)
    data = data or split_fingerprints(datamodule)
    selection = selection_key(settings.max_steps, datamodule.batch_size, getattr(datamodule, "seed", 0))
    key = cache_key(teacher_identity(teacher, datamodule, settings.seed), tokenizer_fingerprint(datamodule.tokenizer),
                    data, mode, k, selection, settings.sampling)
    return Path(root) / cache_folder_name(label, key, mode, k)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def write_cache(teacher, datamodule, path: str | Path, settings: WriteSettings, label: str | None = None,
                also: list[tuple[Path, dict]] = (), extra: dict | None = None,
                max_shards: int | None = None) -> tuple[list[CacheReader], list[PassStats]]:
    """Run ``teacher`` over the run's splits once and write (or finish) the cache at ``path``.

    Args:
        teacher: a teacher with a local model (``can_generate``: :meth:`~distill.teachers.base.Teacher.causal_lm`);
            prepared here (the default teacher is pretrained on first use), loaded, and its model
            released afterwards.
        datamodule: the run's DataModule, connected to the student's tokenizer.
        path: the cache folder.
        label: the teacher preset's name, recorded as the manifest's ``teacher.choice`` (what
            ``teacher.source`` matches).
        also: more caches from the same teacher pass: ``(folder, {mode, k, encoding, proposal_temperature})``.
        extra: facts recorded in the manifest (e.g. the command line).
        max_shards: stop after that many new shards per split (tests: an interrupted run).

    Returns:
        A reader per cache (``path``'s first) and the pass statistics per split.
    """
    if not teacher.can_generate:
        raise ConfigError(f"a teacher cache is written by running a model, but {type(teacher).__name__} has none here "
                          "(teacher=cached / remote / none): pick a model teacher (teacher=tiny_stdlib, teacher=hf "
                          "teacher.model.name_or_path=..., teacher=smollm2-135m-instruct)")
    tokenizer = datamodule.tokenizer
    vocab = len(tokenizer)
    if teacher.info().vocab_size < vocab:
        raise ConfigError(f"the teacher has {teacher.info().vocab_size} output rows but the tokenizer "
                          f"{tokenizer.name_or_path!r} has {vocab} ids; cache with the tokenizer the teacher was "
                          "trained with (student.tokenizer=<the teacher's>)")
    s = settings
    # Forked: writing a cache on first use must leave the run's RNG (the student's initialisation,
    # its data order) as a run that found the cache written would see it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)  # a teacher built from config gets the same weights on every pass
        teacher.prepare(datamodule)  # the default teacher is pretrained here on first use
        datamodule.setup("fit")
        teacher.load()
        device = _device(s.device)
        teacher.to(device)
        model = teacher.causal_lm()
        common = dict(vocab_size=vocab, shard_size=s.shard_size, seed=s.seed, overwrite=s.overwrite,
                      teacher=teacher_fingerprint(teacher.spec, model, label),
                      tokenizer=tokenizer_fingerprint(tokenizer), extra=extra)
        writers = [CacheWriter(path, mode=s.mode, k=s.k, proposal_temperature=s.proposal_temperature,
                               encoding=dict(s.encoding or {}), **common)]
        # More caches from the same teacher pass: the forward is paid once, each costs its encoding.
        for where, more in also:
            writers.append(CacheWriter(where, mode=more["mode"], k=int(more["k"]),
                                       encoding=dict(more.get("encoding") or {}),
                                       proposal_temperature=float(more.get("proposal_temperature", 1.0)), **common))
        stats = []
        for split in s.splits:
            examples = datamodule.examples(split)
            selection = select_visited(datamodule, s.max_steps) if split == "train" and s.max_steps else None
            data = data_fingerprint(examples, datamodule.seq_len, getattr(datamodule, "source", None), split)
            for writer in writers:
                writer.begin_split(split, data, selection, overwrite=s.overwrite)
            stats.append(cache_split(model, examples, writers, split, pad_id=tokenizer.pad_token_id,
                                     batch_size=s.batch_size, device=device, progress=s.progress,
                                     max_shards=max_shards))
    return [CacheReader(w.path) for w in writers], stats


def is_complete(path: str | Path, splits: tuple[str, ...] = SPLITS) -> bool:
    """Whether ``path`` holds a finished cache of ``splits`` (an interrupted one is resumed, not reused)."""
    try:
        reader = CacheReader(path)
    except ConfigError:
        return False
    entries = reader.manifest.get("splits") or {}
    return all(s in entries and entries[s].get("complete") for s in splits)
