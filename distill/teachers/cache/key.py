"""Where a teacher cache lives: a folder named by what determines its rows, and finding it again.

A cache's rows are decided by the teacher (which weights, in which dtype), the tokenizer, the
examples of each split, the mode and ``k``, and which training examples it holds (all, or those the
first ``max_steps`` steps read). :func:`cache_key` hashes exactly these, so

* two different teachers behind one preset (two ``teacher=hf`` folders) never share a folder;
* ``distill-cache-logits`` and a cached teacher that writes on first use
  (``teacher=cached_auto``) compute the same folder from the same run;
* the folder name stays readable: ``<teacher preset>-<key>-<mode>-k<k>``
  (:func:`cache_folder_name`), e.g. ``smollm2-135m-instruct-3f9c01d2ab-topk-k64``.

:func:`teacher_identity` says who the teacher is without loading its weights: a pretrained default
teacher by its pretraining key (its folder's name), a model by its folder or hub id plus its
config and weights hashes (a converted GGUF by the file's sha256), a model built from config by its
config and seed, a server by its URL and model name.

:func:`find_caches` is the other direction (``teacher=cached`` without ``teacher.path``): it reads
the manifests under the cache root and keeps those that serve this run (same tokenizer, same
training examples, mode, ``k`` and, when set, ``teacher.source``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from distill.config import ConfigError
from distill.teachers.cache.fingerprint import DATA_KEYS, _config_sha, diff_fields, sha256_hex, weights_fingerprint
from distill.teachers.cache.format import FORMAT, MANIFEST

KEY_CHARS = 10  # hex digits of the key in a folder name: 40 bits, collisions need ~1M caches
GGUF_RECORD = "gguf_source.json"  # distill.gguf_import.SOURCE_RECORD: a converted folder's origin and sha256


def teacher_identity(teacher, datamodule=None, seed: int = 0) -> dict:
    """What decides a teacher's outputs, read from configs and files only (no weights loaded).

    Args:
        teacher: any :class:`~distill.teachers.base.Teacher` that runs a model here (``spec``), or a
            server (``url``).
        datamodule: the run's connected DataModule: a teacher pretrained on the run's data is
            identified by its pretraining key, which depends on it.
        seed: the seed a model built from config (random weights) is initialised with.
    """
    folder = teacher.pretrained_folder(datamodule) if datamodule is not None and hasattr(
        teacher, "pretrained_folder") else None
    spec = teacher.spec
    if folder is not None:
        # The folder name is <name>-s<steps>-<pretrain_key>: data, tokenizer, architecture, recipe.
        # Named before pretraining happens, so a cache pass and a training run agree either way.
        return {"kind": "pretrained", "name": folder.name, "dtype": spec.dtype}
    if spec is None:
        url = getattr(teacher, "url", None)
        if url:
            return {"kind": "remote", "url": str(url), "model": getattr(teacher, "model", None)}
        raise ConfigError(f"{type(teacher).__name__} runs no model here, so it has no logits to cache: write a cache "
                          "with a model teacher (teacher=tiny_stdlib, teacher=hf teacher.model.name_or_path=..., "
                          "teacher=smollm2-135m-instruct)")
    base = {"dtype": spec.dtype, "quantization": spec.quantization}
    if spec.from_scratch:
        return {"kind": "config", "config_sha256": _config_sha(spec.hf_config()), "seed": int(seed), **base}
    where = str(spec.name_or_path)
    path = Path(where)
    if path.is_dir():
        record = path / GGUF_RECORD
        if record.exists():  # converted from a GGUF file: its content hash names it, no need to re-hash
            weights = {"kind": "gguf", "sha256": json.loads(record.read_text())["sha256"]}
        else:
            weights = weights_fingerprint(path)
        # The folder's name, not its full path: a moved folder keeps its caches.
        return {"kind": "model", "name": path.resolve().name, "weights": weights,
                "config_sha256": _config_sha(spec.hf_config()), **base}
    config = spec.hf_config()
    commit = getattr(config, "_commit_hash", None)
    return {"kind": "model", "name": where, "weights": {"kind": "hub-commit", "sha256": commit} if commit else None,
            "config_sha256": _config_sha(config), **base}


def selection_key(max_steps: int | None, batch_size: int, seed: int) -> dict | None:
    """The training examples a cache holds: None for the whole split, else the first ``max_steps``
    steps of the order ``batch_size`` and the data ``seed`` give (:func:`~distill.teachers.cache.select_visited`)."""
    if not max_steps or max_steps < 1:
        return None
    return {"max_steps": int(max_steps), "batch_size": int(batch_size), "seed": int(seed)}


def cache_key(identity: dict, tokenizer: dict, data: dict[str, dict], mode: str, k: int,
              selection: dict | None = None, sampling: dict | None = None) -> str:
    """The short hash of everything that determines a cache's rows.

    Args:
        identity: :func:`teacher_identity`.
        tokenizer: :func:`~distill.teachers.cache.tokenizer_fingerprint` (its vocabulary hash counts).
        data: ``{split: data_fingerprint}`` of the run's splits (train and val, cached or not).
        mode / k: what is stored per token.
        selection: :func:`selection_key`.
        sampling: the sampled mode's ``{seed, proposal_temperature}`` (None for top-k).
    """
    parts = {"teacher": identity, "tokenizer": tokenizer.get("vocab_sha256"),
             "data": {s: {k_: d.get(k_) for k_ in DATA_KEYS} for s, d in sorted(data.items())},
             "mode": mode, "k": int(k), "selection": selection, "sampling": sampling if mode == "sampled" else None}
    return sha256_hex(json.dumps(parts, sort_keys=True, default=str).encode())[:KEY_CHARS]


def cache_folder_name(label: str | None, key: str, mode: str, k: int) -> str:
    """``<label>-<key>-<mode>-k<k>``, the label (a teacher preset name) made safe for a path."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", label or "teacher").strip("._") or "teacher"
    return f"{label}-{key}-{mode}-k{int(k)}"


# ----------------------------------------------------------------------------- finding a cache
@dataclass
class Candidate:
    """One cache folder under the root and why it does not serve this run (``problems``, empty if it does)."""

    path: Path
    manifest: dict
    problems: list[str] = field(default_factory=list)

    @property
    def source(self) -> str | None:
        return (self.manifest.get("teacher") or {}).get("choice")

    def describe(self) -> str:
        m = self.manifest
        train = (m.get("splits") or {}).get("train") or {}
        sel = train.get("selection") or {}
        held = f"first {sel['max_steps']} steps" if sel.get("kind") == "visited" else "whole train split"
        splits = ",".join(sorted(m.get("splits") or {}))
        return (f"{self.path} (teacher.source={self.source}, {m.get('mode')} k={m.get('k')}, {held}, splits "
                f"{splits})" + (f": {'; '.join(self.problems)}" if self.problems else ""))


def read_candidates(root: str | Path, mode: str | None = None, k: int | None = None,
                    source: str | None = None) -> list[Candidate]:
    """The caches under ``root`` of this mode, ``k`` and source (the checks that need no data)."""
    root = Path(root)
    out = []
    for manifest_path in sorted(root.glob(f"*/{MANIFEST}")) if root.is_dir() else []:
        try:
            m = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a damaged or half-copied folder serves nobody; the writer reports it when reused
        if m.get("format") != FORMAT:
            continue
        if (mode is not None and m.get("mode") != mode) or (k is not None and int(m.get("k", -1)) != int(k)):
            continue
        if source is not None and (m.get("teacher") or {}).get("choice") != source:
            continue
        out.append(Candidate(manifest_path.parent, m))
    return out


def check_candidate(c: Candidate, tokenizer: dict, train: dict, max_steps: int | None, batch_size: int,
                    seed: int) -> Candidate:
    """Fill ``c.problems``: what keeps this cache from serving a run with this tokenizer, training
    data and length (``max_steps``, with its batch order)."""
    m, problems = c.manifest, []
    if (m.get("tokenizer") or {}).get("vocab_sha256") != tokenizer.get("vocab_sha256"):
        problems.append(f"tokenizer {(m.get('tokenizer') or {}).get('name_or_path')!r} (another vocabulary)")
    entry = (m.get("splits") or {}).get("train")
    if entry is None:
        problems.append("no train split")
    else:
        problems += [f"train {p}" for p in diff_fields(entry.get("data") or {}, train, DATA_KEYS)]
        if not entry.get("complete"):
            problems.append(f"incomplete ({len(entry.get('shards') or {})} of {entry.get('num_shards')} shards: "
                            "rerun the command that wrote it to finish it)")
        sel = entry.get("selection") or {}
        if sel.get("kind") == "visited":
            if max_steps is None or max_steps < 1 or max_steps > sel.get("max_steps", 0):
                problems.append(f"holds only the first {sel.get('max_steps')} steps (this run: {max_steps})")
            elif (sel.get("batch_size"), sel.get("seed")) != (batch_size, seed):
                problems.append(f"another batch order (data.batch_size {sel.get('batch_size')}, data.seed "
                                f"{sel.get('seed')})")
    c.problems = problems
    return c


def write_command(source: str | None, mode: str | None, k: int | None) -> str:
    """The ``distill-cache-logits`` command that writes the cache this run needs: its teacher, mode
    and ``k``, plus the run's own data/student overrides (the cache is aligned to their tokens)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = [o for o in HydraConfig.get().overrides.task
                     if o.lstrip("+~").split("=")[0].split(".")[0] in ("data", "student", "paths", "debug")]
    except (ImportError, ValueError):  # no Hydra context (called from Python)
        overrides = []
    parts = ["distill-cache-logits", f"teacher={source or '<the teacher preset>'}"]
    parts += [f"cache.mode={mode}"] if mode and mode != "topk" else []
    parts += [f"cache.k={k}"] if k and int(k) != 64 else []
    return " ".join(parts + overrides)


def find_cache(root: str | Path, tokenizer: dict, train: dict, *, mode: str | None, k: int | None,
               source: str | None, max_steps: int | None, batch_size: int, seed: int) -> Path:
    """The one cache under ``root`` that serves this run, or a :class:`ConfigError` that says what to do.

    Several matches: the error lists them and names ``teacher.path`` / ``teacher.source``; none: it
    names the near misses (why each does not serve) and the command that writes the right one.
    """
    from distill.teachers.cache.fingerprint import CacheMismatchError

    found = [check_candidate(c, tokenizer, train, max_steps, batch_size, seed)
             for c in read_candidates(root, mode, k, source)]
    ok = [c for c in found if not c.problems]
    if len(ok) == 1:
        return ok[0].path
    if ok:
        raise CacheMismatchError(
            f"teacher=cached: {len(ok)} caches under {root} match this run's tokenizer and data:\n  - "
            + "\n  - ".join(c.describe() for c in ok)
            + "\nPick one with teacher.path=<folder>, or teacher.source=<the teacher preset that wrote it>.")
    what = f"{mode or 'any'} k={k or 'any'}" + (f", teacher.source={source}" if source else "")
    near = ("\nCaches there that do not serve it:\n  - " + "\n  - ".join(c.describe() for c in found[:8])
            if found else "")
    raise CacheMismatchError(
        f"teacher=cached: no teacher cache under {root} for this run ({what}, this run's tokenizer and train "
        f"data{f', {max_steps} steps' if max_steps and max_steps > 0 else ''}).{near}\nWrite it first:\n    "
        f"{write_command(source, mode, k)}\n(add cache.max_steps=N to cache only the examples N steps read), or "
        "point teacher.path at an existing cache, or set teacher.source to the preset that wrote it; or use "
        "teacher=cached_auto, which writes it on first use.")
