"""ULD on the real teacher's logits against a float64 reference written from the paper.

    python experiments/real_cross_tokenizer/reference_check.py experiments/real_cross_tokenizer/runs/seed0/uld \
        --blocks 4 --json experiments/real_cross_tokenizer/reference_check.json

Takes a finished ``experiment=real_cross_tokenizer loss=uld`` run, rebuilds its student from
``checkpoints/last.ckpt`` (as ``distill-export`` does) and its teacher (SmolLM2-135M-Instruct read
through its own tokenizer and aligned to the student's positions by byte spans, the training path),
and on ``--blocks`` held-out blocks compares:

* per position: the framework's ULD (``distill.losses.divergences.uld`` on float32 logits) with
  Boizard et al. (2024), eq. 5, written here in float64 from the formula: both softmaxes sorted in
  decreasing order, the shorter (the student's 2,048) zero-padded to the longer (the teacher's
  49,152), the L1 distance summed;
* a control that must differ: the same L1 without sorting (ids compared as if shared);
* the ULD component the training step adds (the run's own loss object, its reduction included:
  positions with a target and an aligned teacher token, summed, over the step's target tokens)
  with the same reduction of the float64 values.

The alignment itself is the code under test in ``tests/teachers/test_cross_tokenizer.py``; this check
is about the divergence on real vocabularies of different sizes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf


def uld_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Boizard et al. 2024, eq. 5, in float64: sum_i |p_(i) - q_(i)| over sorted, zero-padded vectors."""
    p = torch.softmax(teacher_logits.double(), -1).sort(-1, descending=True).values
    q = torch.softmax(student_logits.double(), -1).sort(-1, descending=True).values
    width = max(p.shape[-1], q.shape[-1])
    p = torch.nn.functional.pad(p, (0, width - p.shape[-1]))
    q = torch.nn.functional.pad(q, (0, width - q.shape[-1]))
    return (p - q).abs().sum(-1)


@torch.no_grad()
def main() -> None:
    from distill.build import build_components
    from distill.run_student import load_student
    from distill.losses.divergences import uld
    from distill.losses.functional import next_token_targets

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished loss=uld run of experiment=real_cross_tokenizer")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    cfg = OmegaConf.load(a.run / ".hydra" / "config.yaml")
    parts = build_components(cfg).load()
    student, _, _ = load_student(a.run)
    student.eval()
    dm = parts.datamodule
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    batch = {k: v[: a.blocks] for k, v in batch.items()}
    module = parts.module
    needs = module.loss.needs
    teacher_out = module.teacher_forward(batch, module._teacher_needs)
    logits = student(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    targets = next_token_targets(batch["labels"])
    keep = (targets != -100) & teacher_out.positions.bool() if teacher_out.positions is not None else targets != -100

    framework = uld(logits[keep].float(), teacher_out.logits[keep].float())
    reference = uld_reference(logits[keep], teacher_out.logits[keep])
    diff = (framework.double() - reference).abs()
    # a control the check must tell apart: the same L1 without sorting (the teacher's ids cut to the
    # student's 2,048 and compared id by id, as if the vocabularies were shared)
    pt = torch.softmax(teacher_out.logits[keep].double(), -1)
    qs = torch.softmax(logits[keep].double(), -1)
    unsorted = (pt[:, : qs.shape[-1]] - qs).abs().sum(-1) + pt[:, qs.shape[-1]:].sum(-1)

    # the component as the training step adds it, against the same reduction of the float64 values
    from distill.types import StudentOutput

    _, logged = module.loss(StudentOutput(logits=logits), teacher_out, targets, step=0,
                            num_tokens=(targets != -100).sum(), batch=batch)
    component = float(logged["uld"])
    reference_component = float(reference.sum() / (targets != -100).sum())
    out = {"run": str(a.run), "blocks": a.blocks, "positions": int(keep.sum()), "target_tokens": int((targets != -100).sum()),
           "student_vocab": int(logits.shape[-1]), "teacher_vocab": int(teacher_out.logits.shape[-1]),
           "per_position_max_abs_diff": float(diff.max()), "per_position_mean": float(reference.mean()),
           "control_unsorted_max_abs_diff": float((framework.double() - unsorted).abs().max()),
           "component_framework": component, "component_reference_float64": reference_component,
           "component_abs_diff": abs(component - reference_component)}
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    # float32 sums of 49,152 terms carry ~2e-5 of rounding on values near 1.7; a wrong formula is off by O(0.1)
    assert out["per_position_max_abs_diff"] < 1e-4 and out["component_abs_diff"] < 1e-4, "ULD differs from its reference"
    assert out["control_unsorted_max_abs_diff"] > 1e-2, "the check cannot tell sorted from unsorted: it proves nothing"


if __name__ == "__main__":
    main()
