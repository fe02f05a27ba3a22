"""``distill-cache-logits``: run the frozen teacher once over the data; store sparse logits.

Use the same ``data=`` / ``student=`` overrides as the training runs that will read the cache
(the cache is aligned to their examples and tokenizer, and checked against them)::

    distill-cache-logits                                  # default teacher, top-64, train + val
    distill-cache-logits cache.mode=sampled cache.k=64    # importance-sampled (random-sampling KD): ~90 B/token
    distill-cache-logits cache.encoding.compression=zstd  # smaller shards (pip install 'distill[cache]')
    distill-cache-logits cache.max_steps=600              # only the examples 600 steps will read
    distill-train experiment=stdlib_cached                # train from it (teacher=cached, loss=kd_chunked)

The cache goes to ``<paths.cache_dir>/data/teacher_logits/<teacher preset>-<key>-<mode>-k<k>``,
keyed by the teacher's identity (weights, not the preset's name), the tokenizer, the data, mode,
k and max_steps; ``cache.dir=...`` names a folder of your own. Interrupting is safe: a rerun with
the same overrides verifies the manifest and resumes at the first unfinished shard.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from distill.config import CONF_DIR, ConfigError, app_errors, instantiate, prepare_app
from distill.teachers.cache.reader import CacheReader
from distill.teachers.cache.write import WriteSettings, keyed_path, split_fingerprints, write_cache

log = logging.getLogger(__name__)


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


def _settings(c: DictConfig) -> WriteSettings:
    return WriteSettings(mode=str(c.mode), k=int(c.k), splits=tuple(c.splits),
                         max_steps=int(c.max_steps) if c.get("max_steps") else None,
                         encoding=dict(OmegaConf.to_container(c.encoding, resolve=True)) if c.get("encoding") else {},
                         shard_size=int(c.shard_size), batch_size=int(c.batch_size), device=str(c.device),
                         progress=bool(c.progress), seed=int(c.seed),
                         proposal_temperature=float(c.proposal_temperature), overwrite=bool(c.overwrite))


def cache_logits(cfg: DictConfig, max_shards: int | None = None) -> CacheReader | list[CacheReader]:
    """Write (or finish) the cache described by ``cfg.cache``; return a reader of it.

    The folder is ``cache.dir`` when set, else ``<cache.root>/<cache.name>``, else
    ``<cache.root>/<teacher preset>-<key>-<mode>-k<k>``, keyed by what determines the rows
    (:mod:`distill.teachers.cache.key`: the teacher's identity, tokenizer, data, mode, k,
    max_steps): ``teacher=cached`` finds it there by itself. With ``cache.also`` (more ``{mode, k}``
    caches from the same teacher pass) a list of readers, the main cache's first. ``max_shards``
    stops after that many new shards per split (to test resuming).
    """
    from distill.data.tokenizer import load_tokenizer

    c = cfg.cache
    torch.manual_seed(cfg.seed)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    # The parts of distill.build.build_checked a cache pass needs (it has no loss to check): the
    # student's tokenizer (trained on the run's data where the student config says so) and the data.
    student = instantiate(cfg.student, "student")
    datamodule = instantiate(cfg.data, "data")
    tokenizer = load_tokenizer(student.tokenizer, student.tokenizer_build, source=datamodule.source)
    datamodule.connect(tokenizer)
    teacher = instantiate(cfg.teacher, "teacher")
    if not teacher.can_generate:
        raise ConfigError(f"distill-cache-logits: teacher must be a model to run (e.g. teacher=tiny_stdlib), got "
                          f"{type(teacher).__name__}; teacher=cached / remote / none have no logits to cache")
    settings = _settings(c)
    choice = _teacher_choice(cfg)
    data = split_fingerprints(datamodule)

    def where(mode: str, k: int, explicit: str | None = None) -> Path:
        if explicit:
            return Path(explicit)
        return keyed_path(c.root, choice, teacher, datamodule, settings, data, mode, k)

    main = where(settings.mode, settings.k, c.get("dir") or (str(Path(c.root) / c.name) if c.get("name") else None))
    also = [(where(e["mode"], int(e["k"]), e.get("dir")), dict(e)) for e in (c.get("also") or [])]
    readers, rows = write_cache(teacher, datamodule, main, settings, label=choice, also=also,
                                extra={"overrides": _overrides()}, max_shards=max_shards)
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
    print(f"train from it with teacher=cached (found by tokenizer and data; teacher.source={choice} picks it among "
          f"several, teacher.path={readers[0].path} names it)", flush=True)
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
