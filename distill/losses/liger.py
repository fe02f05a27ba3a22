"""Liger-Kernel's fused linear losses (Hsu et al., 2024) as an optional backend of fused execution.

On a CUDA device with ``liger-kernel`` installed, :class:`Liger` hands the cases Liger covers to its
Triton kernels: cross-entropy (``LigerFusedLinearCrossEntropyLoss``) and the generalised JSD family
(``LigerFusedLinearJSD``: beta 0 is forward KL, 1 reverse KL, as here), with the teacher given as
hidden states + head and uniform token weights. Anything else returns None and the caller uses the
PyTorch fused path. Which component maps to which Liger loss is declared by the component
(:meth:`distill.losses.base.LogitLoss.liger`), not looked up here.

A failure (an API or version mismatch) is reported once and switches Liger off **for the strategy
that owns this object**: the state lives on the instance, not in the module, so tests and separate
losses do not see each other's failures.
"""

from __future__ import annotations

import warnings

import torch

from distill.losses.targets import head_rows

BACKENDS = ("auto", "torch", "liger")


def _liger_module():
    try:
        import liger_kernel.transformers as lt  # noqa: F401  (needs triton and a GPU)
        return lt
    except Exception:  # ImportError, or triton failing to initialise
        return None


def uniform_weight(token_weights: torch.Tensor) -> torch.Tensor | None:
    """The common value of the non-zero token weights (a 0-dim tensor), or None if they differ."""
    nz = token_weights[token_weights != 0]
    if nz.numel() == 0 or not bool((nz == nz[0]).all()):
        return None
    return nz[0]


class Liger:
    """Liger's fused losses behind ``backend`` ("auto": when usable; "torch": never; "liger": required).

    Liger reduces by the mean over non-ignored tokens; ``sum(w * value)`` with uniform weights ``w``
    is that mean times ``n_valid * w``. Its JSD has no ``T^2`` factor (``w`` carries it).
    """

    def __init__(self, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"fused loss: backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.failed = False

    def usable(self, hidden: torch.Tensor) -> bool:
        if self.backend == "torch" or self.failed or not hidden.is_cuda:
            return False
        if _liger_module() is None:
            if self.backend == "liger":
                raise RuntimeError("backend='liger' but liger-kernel is not importable (pip install liger-kernel; "
                                   "needs a CUDA GPU and triton)")
            return False
        return True

    def _run(self, fn, token_weights: torch.Tensor) -> torch.Tensor | None:
        w = uniform_weight(token_weights)
        if w is None:
            return None
        valid = token_weights != 0
        try:
            mean = fn(valid)
        except Exception as e:  # an API or version mismatch: fall back, once and loudly
            self.failed = True
            warnings.warn(f"Liger fused loss failed ({type(e).__name__}: {e}); using the PyTorch fused path",
                          stacklevel=3)
            return None
        return None if mean is None else mean.to(torch.promote_types(mean.dtype, torch.float32)) * (w * valid.sum())

    def cross_entropy(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      token_weights: torch.Tensor) -> torch.Tensor | None:
        """``sum w * CE(hidden @ weight.T, labels)``, or None when Liger does not apply."""
        lt = _liger_module()
        h2 = hidden.reshape(-1, hidden.shape[-1])

        def fn(valid):
            y = torch.where(valid, labels, -100).reshape(-1)
            return lt.LigerFusedLinearCrossEntropyLoss(reduction="mean")(weight, h2, y)
        return self._run(fn, token_weights)

    def jsd(self, hidden: torch.Tensor, weight: torch.Tensor, teacher_head: tuple[torch.Tensor, torch.Tensor] | None,
            token_weights: torch.Tensor, beta: float, temperature: float) -> torch.Tensor | None:
        """``sum w * JSD_beta`` against a teacher given as ``(hidden, head)``, or None."""
        if teacher_head is None:
            return None
        lt = _liger_module()
        th, tw = teacher_head
        vocab = min(weight.shape[0], tw.shape[0])
        h2 = hidden.reshape(-1, hidden.shape[-1])

        def fn(valid):
            y = torch.where(valid, 0, -100).reshape(-1)
            loss = lt.LigerFusedLinearJSD(jsd_beta=beta, ignore_index=-100, temperature=temperature)
            return loss(h2, head_rows(weight, vocab), th.detach().reshape(-1, th.shape[-1]),
                        head_rows(tw.detach(), vocab), y)
        return self._run(fn, token_weights)
