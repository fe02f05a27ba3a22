"""``distill-cache-logits``: run the frozen teacher once over the data; store sparse logits.

Use the same ``data=`` / ``student=`` overrides as the training runs that will read the cache
(the cache is aligned to their examples and tokenizer, and checked against them)::

    distill-cache-logits                                  # default teacher, top-64, train + val
    distill-cache-logits cache.mode=sampled cache.k=64    # importance-sampled (random-sampling KD): ~90 B/token
    distill-cache-logits cache.encoding.compression=zstd  # smaller shards (pip install 'distill[cache]')
    distill-cache-logits cache.max_steps=600              # only the examples 600 steps will read
    distill-train experiment=stdlib_cached                # train from it (teacher=cached, loss=kd_chunked)

Interrupting is safe: a rerun with the same overrides verifies the manifest and resumes at the
first unfinished shard.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from distill.teachers.cache import (CacheReader, CacheWriter, cache_split, data_fingerprint, select_visited,
                                    teacher_fingerprint, tokenizer_fingerprint)
from distill.config import CONF_DIR, instantiate
from distill.config import app_errors, prepare_app

log = logging.getLogger(__name__)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _teacher_choice(cfg: DictConfig) -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if cfg.cache.get("teacher_name"):
        return str(cfg.cache.teacher_name)
    try:
        return HydraConfig.get().runtime.choices.get("teacher")
    except ValueError:  # no Hydra context (called from Python)
        return None


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def cache_logits(cfg: DictConfig, max_shards: int | None = None) -> CacheReader | list[CacheReader]:
    """Write (or finish) the cache described by ``cfg.cache``; return a reader of it.

    With ``cache.also`` (more ``{mode, k}`` caches from the same teacher pass) a list of readers,
    ``cache.dir``'s first. ``max_shards`` stops after that many new shards per split (to test
    resuming).
    """
    from distill.data.tokenizer import load_tokenizer
    from distill.teachers.hf import HFTeacher

    c = cfg.cache
    torch.manual_seed(cfg.seed)  # a teacher built from config (tests) gets the same weights on every rerun
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    # The parts of distill.build.build_checked a cache pass needs (it has no loss to check): the
    # student's tokenizer (trained on the run's data where the student config says so) and the data.
    student = instantiate(cfg.student, "student")
    datamodule = instantiate(cfg.data, "data")
    tokenizer = load_tokenizer(student.tokenizer, student.tokenizer_build, source=datamodule.source)
    datamodule.connect(tokenizer)
    teacher = instantiate(cfg.teacher, "teacher")
    if not isinstance(teacher, HFTeacher):
        raise ValueError(f"distill-cache-logits: teacher must be a model to run (e.g. teacher=tiny_stdlib), got "
                         f"{type(teacher).__name__}; teacher=cached / none have no logits to cache")
    vocab = len(tokenizer)
    info = teacher.info()
    if info.vocab_size < vocab:
        raise ValueError(f"teacher has {info.vocab_size} output rows but the tokenizer {student.tokenizer!r} has "
                         f"{vocab} ids; cache with the student tokenizer the teacher was trained with")
    teacher.prepare(datamodule)  # the default teacher is pretrained here on first use
    datamodule.setup("fit")
    teacher.load()
    device = _device(c.device)
    teacher.to(device)
    model = teacher.model
    choice = _teacher_choice(cfg)
    encoding = dict(OmegaConf.to_container(c.encoding, resolve=True)) if c.get("encoding") else {}
    common = dict(vocab_size=vocab, shard_size=int(c.shard_size), seed=int(c.seed),
                  overwrite=bool(c.overwrite), teacher=teacher_fingerprint(teacher.spec, model, choice),
                  tokenizer=tokenizer_fingerprint(tokenizer), extra={"overrides": _overrides()})
    writers = [CacheWriter(c.dir, mode=c.mode, k=int(c.k), proposal_temperature=float(c.proposal_temperature),
                           encoding=encoding, **common)]
    # More caches from the same teacher pass (e.g. top-k and sampled side by side): the forward
    # is paid once, each extra cache costs only its encoding.
    for extra in c.get("also") or []:
        mode, k = extra["mode"], int(extra["k"])
        where = extra.get("dir") or str(Path(c.dir).parent / f"{choice or 'teacher'}-{mode}-k{k}")
        # Its own encoding: the fields it names, "auto" (the smallest for its mode) for the rest.
        writers.append(CacheWriter(where, mode=mode, k=k, encoding=dict(extra.get("encoding") or {}),
                                   proposal_temperature=float(extra.get("proposal_temperature", 1.0)), **common))
    rows = []
    for split in c.splits:
        if split not in ("train", "val"):
            raise ValueError(f"cache.splits: unknown split {split!r}; use train and/or val")
        examples = datamodule.examples(split)
        selection = None
        if split == "train" and c.get("max_steps"):
            selection = select_visited(datamodule, int(c.max_steps))
        data = data_fingerprint(examples, datamodule.seq_len, datamodule.source, split)
        for writer in writers:
            writer.begin_split(split, data, selection, overwrite=bool(c.overwrite))
        stats = cache_split(model, examples, writers, split, pad_id=tokenizer.pad_token_id,
                            batch_size=int(c.batch_size), device=device, progress=bool(c.progress),
                            max_shards=max_shards)
        rows.append(stats)
    readers = [CacheReader(w.path) for w in writers]
    for reader in readers:
        m = reader.manifest
        print(f"\n=== teacher cache: {m['mode']}, k={m['k']}, {reader.encoding} -> {reader.path}", flush=True)
        print(f"{'split':<7}{'examples':>10}{'tokens':>12}{'shards new/skipped':>20}{'seconds':>9}{'tok/s':>10}"
              f"{'MB':>9}{'B/token':>9}")
        for s in rows:
            n_bytes, n_tok = reader.stored_bytes(s.split)
            print(f"{s.split:<7}{s.examples:>10}{n_tok:>12}{f'{s.shards_written}/{s.shards_skipped}':>20}"
                  f"{s.seconds:>9.1f}{s.tokens / max(s.seconds, 1e-9):>10.0f}{n_bytes / 1e6:>9.1f}"
                  f"{n_bytes / max(n_tok, 1):>9.1f}", flush=True)
    return readers[0] if len(readers) == 1 else readers


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="cache_logits")
def _hydra_main(cfg: DictConfig) -> None:
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    t0 = time.time()
    with app_errors():
        cache_logits(cfg)
    log.info("distill-cache-logits: done in %.0f s", time.time() - t0)


def main() -> None:
    prepare_app()
    _hydra_main()


if __name__ == "__main__":
    main()
