"""Tokenizers: every model loads its tokenizer with ``AutoTokenizer.from_pretrained``.

For the embedded default there is no hub to download from, so :func:`train_bpe_tokenizer` trains
a byte-level BPE on the stdlib corpus with the ``tokenizers`` library and saves it in Hugging Face
format; afterwards it loads through exactly the same path as a real model's tokenizer.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from distill.config import ConfigError
from distill.data.vocab import same_vocabulary, tokenizer_fingerprint  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"}

# Any one of these makes a folder a tokenizer folder for AutoTokenizer (fast json, sentencepiece,
# GPT-2 / BERT vocabularies, tiktoken, Mistral's tekken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json",
                   "vocab.txt", "merges.txt", "tekken.json", "sentencepiece.bpe.model")
STUDENT_KEY = "student.tokenizer / student.name_or_path"


class TokenizerNotFound(ConfigError, FileNotFoundError):
    """A tokenizer folder or hub id that does not load: a :class:`ConfigError` (the apps print it
    without a traceback, rc 2) that is also a ``FileNotFoundError`` for callers that catch that."""


def has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES) or any(folder.glob("*.tiktoken"))


def train_bpe_tokenizer(texts: list[str], vocab_size: int, out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style) on ``texts`` and save it to ``out_dir`` in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    fast.save_pretrained(tmp)
    tmp.replace(out) if not out.exists() else None
    log.info("trained a %d-token byte-level BPE on %d documents -> %s", len(fast), len(texts), out)
    return AutoTokenizer.from_pretrained(out)


def build_key(build: dict, source=None) -> str:
    """What determines a trained tokenizer: its settings and the texts it is trained on.

    ``corpus: data`` trains on the run's own training split, so the key holds that source's
    fingerprint (or, for a source without one, a hash of its texts); ``corpus: stdlib`` on the
    interpreter's standard library.
    """
    import hashlib
    import json
    import sys

    settings = {k: v for k, v in build.items() if k != "dir"}
    corpus = settings.get("corpus", "stdlib")
    if corpus == "data":
        if source is None:
            raise ValueError("student.tokenizer_build.corpus=data trains on the run's data, but no data source "
                             "was given")
        what = source.fingerprint("train") if hasattr(source, "fingerprint") else ""
        if not what:
            what = hashlib.sha256("\0".join(_build_texts(build, source)).encode()).hexdigest()
        settings["data"] = [type(source).__name__, what]
    else:
        settings["data"] = ["stdlib", sys.version]
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _build_texts(build: dict, source=None) -> list[str]:
    from distill.data.corpus import cap_chars, read_stdlib_texts

    max_chars = build.get("max_chars", 3_000_000)
    corpus = build.get("corpus", "stdlib")
    if corpus == "data":
        return cap_chars(source.texts("train"), max_chars)
    if corpus != "stdlib":
        raise ValueError(f"student.tokenizer_build.corpus: 'data' (the run's training data) or 'stdlib', "
                         f"got {corpus!r}")
    return read_stdlib_texts("train", max_chars=max_chars)


def trained_tokenizer_path(build: dict, source=None) -> Path:
    """The folder of the tokenizer ``build`` describes: ``<dir>/bpe-<vocab>-<key>`` (see :func:`build_key`)."""
    if not build.get("dir"):
        raise ValueError("student.tokenizer_build.dir: where trained tokenizers are kept (e.g. "
                         "${paths.cache_dir}/tokenizers); or set student.tokenizer to a folder")
    return Path(build["dir"]) / f"bpe-{int(build.get('vocab_size', 2048))}-{build_key(build, source)}"


def load_tokenizer(name_or_path: str | None, build: dict | None = None, source=None,
                   key: str = STUDENT_KEY) -> PreTrainedTokenizerBase:
    """Load a tokenizer; with ``build`` and no such folder yet, train it first.

    Args:
        name_or_path: hub id or local folder; None with ``build`` = the keyed folder
            :func:`trained_tokenizer_path` names.
        build: ``{"corpus": "data" | "stdlib", "vocab_size": N, "max_chars": M, "dir": D}`` to train
            a byte-level BPE when the folder does not exist yet (the embedded default and tiny
            models). ``corpus: data`` trains on the first ``max_chars`` characters of the run's
            training split, so the tokenizer follows the run's data.
        source: the run's data source (for ``corpus: data``).
        key: the config key(s) an error names (the teacher's checks pass their own).

    Raises:
        TokenizerNotFound: a folder without tokenizer files, or one that does not load (a ConfigError).
    """
    if build and name_or_path is None:
        name_or_path = str(trained_tokenizer_path(build, source))
    if name_or_path is None:
        raise ValueError("student.tokenizer: set a tokenizer folder or hub id (or student.tokenizer_build)")
    if build and not Path(name_or_path).exists():
        texts = _build_texts(build, source)
        if not texts:
            raise ValueError(f"data: source {type(source).__name__ if source is not None else 'stdlib'} gave 0 "
                             "training examples (no text), fewer than one batch, and none to train the student's "
                             "tokenizer on (student.tokenizer_build). Point the data source at files with text.")
        Path(name_or_path).parent.mkdir(parents=True, exist_ok=True)
        return train_bpe_tokenizer(texts, int(build.get("vocab_size", 2048)), name_or_path)
    folder = Path(name_or_path)
    if folder.is_dir() and not has_tokenizer_files(folder):
        # Checked before transformers tries: it would fall back to the config's tokenizer class and
        # fail with "install sentencepiece or tiktoken", which sends the user after the wrong fix.
        raise TokenizerNotFound(
            f"{key}: the folder {str(folder)!r} has no tokenizer files (none of {', '.join(TOKENIZER_FILES[:5])}, "
            "...). A folder written by model.save_pretrained alone holds the weights only: save the tokenizer "
            "beside them (tokenizer.save_pretrained(folder)), or point the tokenizer key at a folder that has one "
            "(for a student cut from a teacher, the teacher's folder).")
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        where = "a local folder whose tokenizer files do not load" if folder.is_dir() else \
            "not a local folder and not reachable on the hub"
        raise TokenizerNotFound(f"{key}: tokenizer {name_or_path!r} could not be loaded: {where} "
                                f"({e.__class__.__name__}: {str(e).strip().splitlines()[0][:200]}).") from e
    if tok.pad_token is None:
        # Causal LMs often ship without a pad token; padding positions are masked anyway.
        tok.pad_token = tok.eos_token
    return tok

