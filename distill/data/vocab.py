"""When two tokenizers are the same: the one identity check (vocabulary checks, caches, data keys)."""

from __future__ import annotations


def tokenizer_fingerprint(tokenizer) -> dict:
    """``{name_or_path, size, vocab_sha256}``: the hash of the id <-> token map decides identity.

    The one definition of "the same tokenizer" (vocabulary checks, caches, tokenized-data keys).
    """
    import hashlib
    import json

    vocab = tokenizer.get_vocab()
    # the serialisation existing cache manifests were written with: keep it byte for byte
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), sort_keys=True, default=str).encode()).hexdigest()
    return {"name_or_path": str(getattr(tokenizer, "name_or_path", "")), "size": len(tokenizer),
            "vocab_sha256": digest}


def same_vocabulary(a, b) -> bool:
    """True when both tokenizers map every token to the same id (sizes alone are not enough)."""
    return a is b or a.get_vocab() == b.get_vocab()
