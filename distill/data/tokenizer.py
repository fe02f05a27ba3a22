"""Tokenizers: every model loads its tokenizer with ``AutoTokenizer.from_pretrained``.

For the embedded default there is no hub to download from, so :func:`train_bpe_tokenizer` trains
a byte-level BPE on the stdlib corpus with the ``tokenizers`` library and saves it in Hugging Face
format; afterwards it loads through exactly the same path as a real model's tokenizer.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"}


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


def load_tokenizer(name_or_path: str, build: dict | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer; if ``build`` is given and ``name_or_path`` is missing, train it first.

    Args:
        name_or_path: hub id or local folder.
        build: ``{"corpus": "stdlib", "vocab_size": N, "max_chars": M}`` to train a byte-level BPE
            on the stdlib corpus when the folder does not exist yet (the embedded default).
    """
    if build and not Path(name_or_path).exists():
        from distill.data.corpus import read_stdlib_texts

        if build.get("corpus", "stdlib") != "stdlib":
            raise ValueError(f"student.tokenizer_build.corpus: only 'stdlib' can be trained here, got {build['corpus']!r}")
        texts = read_stdlib_texts("train", max_chars=build.get("max_chars", 3_000_000))
        Path(name_or_path).parent.mkdir(parents=True, exist_ok=True)
        return train_bpe_tokenizer(texts, int(build.get("vocab_size", 2048)), name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"tokenizer {name_or_path!r} could not be loaded: not a local folder with a "
                                f"tokenizer and not reachable on the hub ({e.__class__.__name__}). Fix "
                                "student.tokenizer / student.name_or_path.") from e
    if tok.pad_token is None:
        # Causal LMs often ship without a pad token; padding positions are masked anyway.
        tok.pad_token = tok.eos_token
    return tok
