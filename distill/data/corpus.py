"""Text sources for causal-LM distillation.

A *source* turns raw data into tokenized examples for one split::

    source.examples(split, tokenizer, max_length) -> list[{"input_ids": [...], "labels": [...]}]

``labels`` are aligned with ``input_ids`` (Hugging Face convention) with ``-100`` where no loss
applies. :class:`distill.data.datamodule.DistillDataModule` pads and batches them.

The embedded default is :class:`StdlibCorpus`: the Python standard library's own source, a real
code corpus present on every Python install, split into train and held-out **by file** so no
held-out function was seen in training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sysconfig
from pathlib import Path
from typing import Iterator

from distill.data.conventions import document_tokens
from distill.jsonl import iter_jsonl

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def stdlib_dir() -> Path:
    """The running interpreter's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def _is_val(name: str, val_fraction: float) -> bool:
    """Deterministic split by file name: the same on every machine and Python run."""
    h = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)
    return (h % 10_000) < val_fraction * 10_000


def held_out(names: list[str], val_fraction: float, min_docs: int, config_key: str = "data.source") -> list[bool]:
    """Which documents are held out: the hash split of :func:`_is_val`, enlarged to ``min_docs``.

    A hash split of a small folder can hold out one file (34 files at 5%: 1 file, 255 tokens), and
    every held-out figure of the run then rests on it. Enlarging takes the documents with the
    smallest hashes, the ones the split would add first as ``val_fraction`` grows, so it stays
    deterministic and a superset of the plain split.
    """
    flags = [_is_val(n, val_fraction) for n in names]
    if sum(flags) >= min_docs or not names:  # no documents at all: the empty-data error says it better
        return flags
    if len(names) - min_docs < 1:
        raise ValueError(f"{config_key}: {len(names)} documents are too few to hold out {min_docs} for validation "
                         f"({config_key}.min_val_docs) and train on the rest: point {config_key}.val at separate "
                         "held-out data, lower min_val_docs, or add documents")
    rank = sorted(range(len(names)), key=lambda i: (int(hashlib.sha1(names[i].encode()).hexdigest()[:8], 16) % 10_000, i))
    chosen = set(rank[:min_docs])
    log.warning("%s: the %.0f%% hash split held out %d of %d documents; held out %d instead (min_val_docs)",
                config_key, 100 * val_fraction, sum(flags), len(names), min_docs)
    return [i in chosen for i in range(len(names))]


def stdlib_files(root: Path | None = None, exclude_dirs: tuple[str, ...] = ("test", "tests", "idlelib",
                 "site-packages", "lib2to3", "turtledemo", "__pycache__")) -> list[Path]:
    """Sorted ``*.py`` files of the stdlib, without tests and vendored or demo code."""
    root = Path(root) if root else stdlib_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"stdlib corpus: folder {root} does not exist")
    files = []
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root).parts
        if any(part in exclude_dirs for part in parts[:-1]):
            continue
        files.append(p)
    return files


def read_stdlib_texts(split: str, val_fraction: float = 0.05, max_chars: int | None = None,
                      root: str | None = None) -> list[str]:
    """The texts of one split, in a fixed order, up to ``max_chars`` characters in total."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    base = Path(root) if root else stdlib_dir()
    texts, total = [], 0
    for p in stdlib_files(base):
        name = p.relative_to(base).as_posix()
        if _is_val(name, val_fraction) != (split == "val"):
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    return texts


def pack(token_lists: list[list[int]], block: int, eos_id: int | None, bos_id: int | None = None) -> list[dict]:
    """Concatenate documents (each ``[bos] + ids + [eos]``, framed as the tokenizer's family frames
    them, see :func:`distill.data.conventions.document_tokens`) and cut into ``block``-token examples.

    Packing wastes no compute on padding; the remainder shorter than a block is dropped.
    """
    stream: list[int] = []
    for ids in token_lists:
        if bos_id is not None:
            stream.append(bos_id)
        stream.extend(ids)
        if eos_id is not None:
            stream.append(eos_id)
    n = len(stream) // block
    return [{"input_ids": stream[i * block:(i + 1) * block], "labels": stream[i * block:(i + 1) * block]}
            for i in range(n)]


def cap_chars(texts: list[str], max_chars: int | None) -> list[str]:
    """The leading documents up to ``max_chars`` characters in total (bounds tokenization time)."""
    if max_chars is None:
        return texts
    out, total = [], 0
    for t in texts:
        if total >= max_chars:
            break
        out.append(t)
        total += len(t)
    return out


def jsonl_texts(path: Path, field: str, config_key: str) -> Iterator[str]:
    """Each row's ``field`` from a JSONL file, blank lines skipped.

    A row without the field is an error naming the file, the line, the fields it does have and
    ``config_key``, the setting that chooses the field.
    """
    for lineno, row in iter_jsonl(path):
        if field not in row:
            raise KeyError(f"{config_key}: {path}:{lineno} has no field {field!r} (fields: {sorted(row)})")
        yield str(row[field])


class _TextSource:
    """Shared logic: texts -> tokenized, packed examples, cached on disk per tokenizer."""

    cache_dir: str | None = None

    def texts(self, split: str) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def fingerprint(self, split: str) -> str:
        return ""

    def examples(self, split: str, tokenizer, max_length: int) -> list[dict]:
        cache = None
        if self.cache_dir and self.fingerprint(split):
            framing = document_tokens(tokenizer)
            key = hashlib.sha1(json.dumps([self.fingerprint(split), _tokenizer_fingerprint(tokenizer), max_length,
                                           [framing.bos_id, framing.eos_id]]).encode()).hexdigest()[:16]
            cache = Path(self.cache_dir) / f"{type(self).__name__}-{split}-{key}.json"
            if cache.exists():
                return json.loads(cache.read_text())
        texts = self.texts(split)
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        framing = document_tokens(tokenizer)
        examples = pack(ids, max_length, framing.eos_id, framing.bos_id)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(examples))
            tmp.replace(cache)
        return examples


def _tokenizer_fingerprint(tokenizer) -> str:
    from distill.data.vocab import tokenizer_fingerprint

    return tokenizer_fingerprint(tokenizer)["vocab_sha256"][:16]


class StdlibCorpus(_TextSource):
    """The Python standard library's source as a code corpus (the embedded default).

    Args:
        val_fraction: share of *files* held out.
        max_chars: cap per split (train gets it, val gets ``max_chars * val_fraction``), to bound
            tokenization time on small machines.
        root: another source tree to read instead of the stdlib (same filtering rules).
        cache_dir: where tokenized splits are cached (keyed by tokenizer and settings).
    """

    def __init__(self, val_fraction: float = 0.05, max_chars: int | None = 6_000_000,
                 root: str | None = None, cache_dir: str | None = None):
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.source.val_fraction must be in (0, 1), got {val_fraction}")
        self.val_fraction, self.max_chars, self.root, self.cache_dir = val_fraction, max_chars, root, cache_dir

    def _cap(self, split: str) -> int | None:
        if self.max_chars is None:
            return None
        return self.max_chars if split == "train" else max(1, int(self.max_chars * self.val_fraction))

    def texts(self, split: str) -> list[str]:
        return read_stdlib_texts(split, self.val_fraction, self._cap(split), self.root)

    def fingerprint(self, split: str) -> str:
        import sys
        return json.dumps(["stdlib", sys.version, str(self.root or stdlib_dir()), self.val_fraction,
                           self._cap(split)])


class TextFiles(_TextSource):
    """Local text data: a folder of files (``glob``), one text file, or JSONL with a text field.

    Args:
        train: path to a file, a folder or a JSONL file for training.
        val: same for held-out data; when None, ``val_fraction`` of the train documents is held out.
        glob: pattern for folders.
        text_field: the JSONL field holding the text.
    """

    def __init__(self, train: str, val: str | None = None, glob: str = "**/*.py", text_field: str = "text",
                 val_fraction: float = 0.05, max_chars: int | None = None, cache_dir: str | None = None,
                 min_val_docs: int = 8):
        self.train, self.val, self.glob, self.text_field = train, val, glob, text_field
        self.val_fraction, self.max_chars, self.cache_dir = val_fraction, max_chars, cache_dir
        self.min_val_docs = int(min_val_docs)

    def _read(self, path: str) -> list[str]:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"data.source: {p} does not exist; check the path in your data config")
        if p.is_dir():
            return [f.read_text(encoding="utf-8", errors="replace") for f in sorted(p.glob(self.glob)) if f.is_file()]
        if p.suffix == ".jsonl":
            return list(jsonl_texts(p, self.text_field, "data.source.text_field"))
        return [p.read_text(encoding="utf-8", errors="replace")]

    def texts(self, split: str) -> list[str]:
        if self.val is not None:
            return cap_chars(self._read(self.train if split == "train" else self.val), self.max_chars)
        docs = self._read(self.train)
        val = held_out([str(i) for i in range(len(docs))], self.val_fraction, self.min_val_docs)
        return cap_chars([d for d, v in zip(docs, val) if v == (split == "val")], self.max_chars)


class HFDataset(_TextSource):
    """Any Hugging Face dataset (hub id or local path) with a text column, via ``load_dataset``.

    Args:
        path: dataset id or local path passed to ``datasets.load_dataset``, or a builder name
            (``json``, ``csv``, ``parquet``, ``text``) with ``data_files``.
        name: dataset config name.
        data_files: files for a builder (``path=json data_files=/data/train.jsonl``); a mapping
            ``{train: ..., validation: ...}`` gives named splits.
        train_split / val_split: split names; with ``val_split=None`` a share of train is held out.
        text_field: column holding the text.
    """

    def __init__(self, path: str, name: str | None = None, train_split: str = "train",
                 val_split: str | None = "validation", text_field: str = "text", val_fraction: float = 0.05,
                 max_rows: int | None = None, max_chars: int | None = None, cache_dir: str | None = None,
                 data_files: str | list | dict | None = None, min_val_docs: int = 8):
        self.path, self.name, self.train_split, self.val_split = path, name, train_split, val_split
        self.min_val_docs = int(min_val_docs)
        if data_files is not None and not isinstance(data_files, (str, list, dict)):
            from omegaconf import OmegaConf  # a ListConfig / DictConfig from the config

            data_files = OmegaConf.to_container(data_files)
        self.data_files = data_files
        self.text_field, self.val_fraction, self.max_rows, self.cache_dir = text_field, val_fraction, max_rows, cache_dir
        self.max_chars = max_chars

    def texts(self, split: str) -> list[str]:
        from datasets import load_dataset

        hf_split = self.train_split if (split == "train" or self.val_split is None) else self.val_split
        data_files = self.data_files
        try:
            ds = load_dataset(self.path, self.name, data_files=data_files, split=hf_split)
        except (ConnectionError, FileNotFoundError) as e:
            # Name the setting: datasets' own message does not say which config key to change.
            raise type(e)(f"data.source.path={self.path!r} (data_files={data_files!r}) could not be loaded: {e}. "
                          "Offline, point data.source.path at a local dataset folder, or use "
                          "data.source.path=json data.source.data_files=<file.jsonl>.") from e
        if self.text_field not in ds.column_names:
            raise KeyError(f"data.source.text_field: dataset {self.path!r} has no column {self.text_field!r} "
                           f"(columns: {ds.column_names})")
        rows = ds[self.text_field][: self.max_rows] if self.max_rows else ds[self.text_field]
        if self.val_split is None:
            val = held_out([str(i) for i in range(len(rows))], self.val_fraction, self.min_val_docs)
            rows = [r for r, v in zip(rows, val) if v == (split == "val")]
        return cap_chars(list(rows), self.max_chars)


