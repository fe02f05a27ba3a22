"""Every divergence of the real leaderboard on the real models' logits against a float64 reference
written from its paper.

    python experiments/real_leaderboard/reference_check.py experiments/real_leaderboard/runs/seed0/kd \
        --blocks 2 --json experiments/real_leaderboard/reference_check.json

Takes a finished leaderboard run (its exported ``student/`` folder: a healed pruned SmolLM2, so the
student's distribution is a trained one, not noise), its teacher (SmolLM2-135M-Instruct, full logits,
online) and ``--blocks`` held-out blocks of its data, and for every row's loss config
(``conf/loss/<name>.yaml``, instantiated and configured as a run does it) compares the component the
training step adds (the loss object's own reduction: the sum over target tokens over their count,
times T^2 where the component scales by it, token weights included) with the same reduction of a
float64 reference written here from the paper's formula. A control that must differ (forward KL in
place of the row's divergence) shows that the check can tell the divergences apart.

References (p: teacher, q: student, both softmax(z / T)):
forward KL (Hinton et al. 2015) KL(p||q); reverse KL KL(q||p); generalised JSD (Agarwal et al.
2024, GKD, eq. 1) beta KL(p||m) + (1 - beta) KL(q||m), m = beta p + (1 - beta) q; skew KL (Ko et al.
2024, DistiLLM, eq. 3) KL(p || a p + (1 - a) q); skew reverse KL (eq. 4) KL(q || (1 - a) p + a q);
TVD 1/2 sum |p - q|; AKL (Wu et al. 2024, eq. 9-11) g_head / (g_head + g_tail) KL(p||q) +
g_tail / (g_head + g_tail) KL(q||p), the head being the teacher's top tokens up to mass mu (its
first token always); ToDi (Jung et al. 2025) sum_v [a_v p_v log(p_v / q_v) + (1 - a_v) q_v
log(q_v / p_v)], a_v = sigmoid(log p_v - log q_v); confidence-weighted KL: KL(p||q) weighted per
token by max_v p_v (the teacher's confidence).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROWS = {  # row -> (loss config, overrides of it, the component to check)
    "kd": ("kd", {}, "kl"),
    "kd_t2": ("kd", {"temperature": 2.0}, "kl"),
    "rkl": ("rkl", {}, None),
    "jsd": ("jsd", {}, "jsd"),
    "skl": ("skl", {}, None),
    "srkl": ("srkl", {}, None),
    "akl": ("akl", {}, "akl"),
    "tvd": ("tvd", {}, None),
    "todi": ("todi", {}, None),
    "kd_confidence": ("kd_confidence", {}, "kl"),
}


#: the rows that train on the teacher's top-64 cache (the others run the teacher online)
CACHED_ROWS = ("kd", "kd_t2", "rkl", "jsd", "skl", "srkl", "tvd", "kd_confidence")
K = 64


def buckets(s: torch.Tensor, t: torch.Tensor, T: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cache's view in float64 (``distill/losses/sparse.py``'s docstring): the teacher's top-K
    probabilities at T = 1 plus a tail bucket, sharpened as ``P_b^(1/T)`` renormalised over the K + 1
    buckets; the student's softmax(s / T) over the full vocabulary, summed onto the same buckets.
    Returns (P, Q, topk_ids, topk_logprobs) (the last two as a cache stores them)."""
    lp = torch.log_softmax(t.double(), -1)
    top_lp, ids = lp.topk(K, -1)
    P = torch.cat([top_lp.exp(), (1 - top_lp.exp().sum(-1, keepdim=True)).clamp_min(0)], -1)
    P = P ** (1 / T)
    P = P / P.sum(-1, keepdim=True)
    q = _p(s, T)
    qk = q.gather(-1, ids)
    Q = torch.cat([qk, (1 - qk.sum(-1, keepdim=True)).clamp_min(0)], -1)
    return P, Q, ids, top_lp.float()


def _p(z: torch.Tensor, T: float) -> torch.Tensor:
    return torch.softmax(z.double() / T, -1)


def _kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.xlogy(a, a).sum(-1) - torch.xlogy(a, b).sum(-1)


def reference(kind: str, p: torch.Tensor, q: torch.Tensor, comp) -> torch.Tensor:
    """Per-token float64 value of the divergence ``kind`` between the teacher's ``p`` and the student's
    ``q`` (float64 probabilities; parameters read off the component ``comp``)."""
    if kind in ("kd", "kd_confidence"):
        return _kl(p, q)
    if kind == "rkl":
        return _kl(q, p)
    if kind == "jsd":
        b = float(comp.beta)
        m = b * p + (1 - b) * q
        return b * _kl(p, m) + (1 - b) * _kl(q, m)
    if kind == "skl":
        a = float(comp.alpha)
        return _kl(p, a * p + (1 - a) * q)
    if kind == "srkl":
        a = float(comp.alpha)
        return _kl(q, (1 - a) * p + a * q)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if kind == "akl":
        mu = float(comp.mu)
        ps, order = p.sort(-1, descending=True)
        gap = (ps - q.gather(-1, order)).abs()
        cum = ps.cumsum(-1)
        head = cum <= mu
        head[..., 0] = True  # the teacher's first token is always head
        g_head, g_tail = (gap * head).sum(-1), (gap * ~head).sum(-1)
        return g_head / (g_head + g_tail) * _kl(p, q) + g_tail / (g_head + g_tail) * _kl(q, p)
    if kind == "todi":
        a = torch.sigmoid(torch.log(p) - torch.log(q))
        return (a * p * torch.log(p / q) + (1 - a) * q * torch.log(q / p)).sum(-1)
    raise ValueError(kind)


@torch.no_grad()
def main() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from collect import heldout_blocks, teacher_folder

    from distill.config import load_group
    from distill.losses.functional import next_token_targets
    from distill.types import ModelInfo, StudentOutput, TeacherKind, TeacherOutput

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished leaderboard run (with its exported student/)")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    ids, labels = heldout_blocks(a.run, a.blocks)
    teacher_path = teacher_folder(a.run)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(a.run / "student", dtype=torch.float32).eval()
    t_logits = teacher(input_ids=ids).logits
    s_logits = student(input_ids=ids).logits
    targets = next_token_targets(labels)
    keep = targets != -100
    n = keep.sum()
    s_info, t_info = ModelInfo.from_hf_config(student.config), ModelInfo.from_hf_config(teacher.config)
    teacher_out = TeacherOutput(logits=t_logits)
    out = {"run": str(a.run), "blocks": a.blocks, "target_tokens": int(n), "vocab": int(t_logits.shape[-1]), "rows": {}}
    worst = 0.0
    for row, (name, extra, comp_name) in ROWS.items():
        node = load_group("loss", name)
        node.pop("defaults", None)
        base = OmegaConf.merge(load_group("loss", "kd"), node) if name == "kd_confidence" else node
        base = OmegaConf.merge(base, extra)
        loss = instantiate(base)
        loss.configure(s_info, t_info, TeacherKind.FULL)
        T = float(base.get("temperature", 1.0))
        key = comp_name or next(iter(loss.components))
        comp = loss.components[key]
        weight = torch.ones(targets.shape, dtype=torch.float64)
        if row == "kd_confidence":  # the teacher's confidence at T = 1: max_v p_v
            weight = _p(t_logits, 1.0).max(-1).values
        t2 = T * T if getattr(comp, "scale_by_t2", False) else 1.0
        kind = "kd" if row in ("kd_t2", "kd_confidence") else name
        views = {"full": (teacher_out, _p(t_logits, T), _p(s_logits, T))}
        if row in CACHED_ROWS:  # what the row trained on: the top-64 cache with its tail bucket
            P, Q, ids, top_lp = buckets(s_logits, t_logits, T)
            views["top64"] = (TeacherOutput(topk_ids=ids, topk_logprobs=top_lp), P, Q)
        rec = {"loss": name, "component": key, "temperature": T}
        for view, (tout, p, q) in views.items():
            _, logs = loss(StudentOutput(logits=s_logits), tout, targets, step=0, num_tokens=n)
            ref = float((reference(kind, p, q, comp) * weight)[keep].sum() / n * t2)
            got = float(logs[key])
            control = float((_kl(p, q) * weight)[keep].sum() / n * t2)
            rel = abs(got - ref) / max(abs(ref), 1e-12)
            worst = max(worst, rel)
            rec[view] = {"framework": got, "reference_float64": ref, "rel_diff": rel, "control_forward_kl": control}
            print(f"{row:>14} {view:>5}: framework {got:.6f}  float64 {ref:.6f}  rel diff {rel:.1e}  "
                  f"(forward KL control {control:.4f})")
        out["rows"][row] = rec
    out["max_rel_diff"] = worst
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    assert worst < 1e-4, f"a divergence differs from its float64 reference by {worst:.1e} (relative)"


if __name__ == "__main__":
    main()
