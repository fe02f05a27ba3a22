"""Held-out loss per byte: the one scale on which students with different tokenizers compare.

Held-out CE in nats per *token* depends on the tokenizer (a 1,024-entry BPE cuts the same text
into more, easier tokens than a 2,048-entry one), so the cross-tokenizer ULD row cannot be read
against the other rows, or against its teacher, in ``val/loss``. This script scores every model on
the same text: the held-out blocks of the first run's data, decoded to strings. Each model
re-tokenizes each string with its own tokenizer and the score is

    nats/byte = sum of next-token CE over the predicted tokens / UTF-8 bytes those tokens spell

(the first token of each block is not predicted and its bytes are not counted). Gap closed on this
scale is ``(base - student) / (base - teacher)`` with ``base`` the CE-only run of the same student.

    python experiments/method_leaderboard/per_byte.py --teacher <teacher folder> \
        --runs <run dir> [<run dir> ...] [--blocks 256] [--json out.json]

Each run directory is a finished ``distill-train`` run (``.hydra/config.yaml`` and
``checkpoints/last.ckpt``); its student and tokenizer are rebuilt from its config, as
``distill-export`` does.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from distill.build import build_checked
from distill.export import load_student
from distill.losses import functional as LF


def held_out_texts(run_dir: Path, blocks: int) -> list[str]:
    """The first ``blocks`` held-out blocks of ``run_dir``'s data, decoded with its tokenizer."""
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: not a finished distill-train run directory")
    dm = build_checked(OmegaConf.load(cfg_path)).datamodule
    return [dm.tokenizer.decode(ex["input_ids"], skip_special_tokens=True) for ex in dm.examples("val")[:blocks]]


@torch.no_grad()
def nats_per_byte(model: torch.nn.Module, tokenizer, texts: list[str]) -> dict[str, float]:
    model.eval()
    nats, nbytes, ntokens = 0.0, 0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits
        ce = LF.cross_entropy(logits[:, :-1], x[:, 1:])
        nats += float(ce.sum())
        ntokens += len(ids) - 1
        # bytes of the predicted tokens: the whole text's bytes minus the first token's prefix
        nbytes += len(tokenizer.decode(ids).encode()) - len(tokenizer.decode(ids[:1]).encode())
    return {"nats_per_byte": nats / nbytes, "nats_per_token": nats / ntokens, "tokens": ntokens, "bytes": nbytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True, help="teacher folder (holds its tokenizer)")
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--blocks", type=int, default=256, help="held-out blocks to score (all 256 by default)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    # the cross-tokenizer runs' config names their teacher through this variable (run.sh sets it)
    os.environ.setdefault("LEADERBOARD_TEACHER", str(args.teacher))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = held_out_texts(args.runs[0], args.blocks)
    results = {"teacher": nats_per_byte(AutoModelForCausalLM.from_pretrained(args.teacher),
                                        AutoTokenizer.from_pretrained(args.teacher), texts)}
    for run in args.runs:
        student, tokenizer, _ = load_student(run)  # distill-export's rebuild: the run's config + last.ckpt
        results[str(run)] = nats_per_byte(student, tokenizer, texts)
        print(f"{run}: {results[str(run)]['nats_per_byte']:.4f} nats/byte", flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
