"""How AKL splits its loss between forward and reverse KL, measured on finished leaderboard runs.

For each run directory: load its final student (``checkpoints/last.ckpt``) and the teacher its
config names, run both on the first held-out blocks, and report the mean AKL weights
``w_head`` (on forward KL) and ``w_tail`` (on reverse KL) of :func:`distill.losses.divergences.akl_weights`,
plus the mean forward and reverse KL, over the unmasked tokens; also for a fresh (untrained)
student built after seeding with the run's seed ("init").

    python experiments/method_leaderboard/akl_weights.py <run dir> [<run dir> ...] [--blocks 32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from distill.build import build_components
from distill.config import compose_config
from distill.export import load_student
from distill.losses import divergences as D
from distill.losses import functional as LF


@torch.no_grad()
def measure(run_dir: Path, blocks: int) -> dict:
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    cfg = compose_config("train", overrides, run_dir / "akl_weights")  # the run's config, today's code
    import lightning as L

    L.seed_everything(int(cfg.seed), verbose=False)
    parts = build_components(cfg).load()
    module, dm = parts.module, parts.datamodule
    module.eval()
    teacher = parts.teacher
    teacher.to(torch.device("cpu"))
    fresh = {k: v.clone() for k, v in module.student.state_dict().items()}
    trained = load_student(run_dir)[0].state_dict()  # distill-export's rebuild from last.ckpt
    dm.setup("fit")
    out = {}
    for label, weights in (("init", fresh), ("final", trained)):
        module.student.load_state_dict(weights)
        sums = {"w_head": 0.0, "w_tail": 0.0, "fkl": 0.0, "rkl": 0.0}
        n = 0
        for i, batch in enumerate(dm.val_dataloader()):
            if i * dm.val_batch_size >= blocks:
                break
            y = LF.next_token_targets(batch["labels"])
            mask = y != -100
            s = module.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            t = teacher(batch, frozenset({"teacher_logits"})).logits[..., : s.shape[-1]]
            wh, wt = D.akl_weights(s, t)
            sums["w_head"] += float(wh[mask].sum())
            sums["w_tail"] += float(wt[mask].sum())
            sums["fkl"] += float(LF.forward_kl(s, t)[mask].sum())
            sums["rkl"] += float(LF.reverse_kl(s, t)[mask].sum())
            n += int(mask.sum())
        out[label] = {k: v / max(n, 1) for k, v in sums.items()} | {"tokens": n}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--blocks", type=int, default=32, help="held-out blocks (of 128 tokens) to measure on")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {str(r): measure(r, args.blocks) for r in args.runs}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
