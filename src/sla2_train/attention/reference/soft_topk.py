"""SoftTop-k (SLA2.md §2): m_ij = σ(s_ij/τ + λ_i) with λ_i chosen so that each row sums to k.

λ is found by bisection; its gradient is exact by the implicit function theorem, so the row-sum
constraint also holds to first order in the backward. With w = m(1−m):
    ∂λ_i/∂s_il = −w_il / (τ Σ_j w_ij)
    ∂L/∂s_il   = (w_il/τ) · (g_il − Σ_j g_ij w_ij / Σ_j w_ij)
Detaching λ drops the second term.
"""

from __future__ import annotations

import torch

BISECTION_STEPS = 80  # halves the λ bracket to < 1e-20 of its width: exact in float64
BRACKET_MARGIN = 40.0  # σ(±40) is within 4e-18 of 0/1, so the bracket ends straddle any 1 <= k < n


def _solve_lambda(z: torch.Tensor, k: int) -> torch.Tensor:
    """λ [..., 1] with Σ_j σ(z_j + λ) = k, for logits z [..., n] (computed in float64)."""
    z = z.double()
    lo = -z.amax(dim=-1, keepdim=True) - BRACKET_MARGIN
    hi = -z.amin(dim=-1, keepdim=True) + BRACKET_MARGIN
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        too_big = torch.sigmoid(z + mid).sum(dim=-1, keepdim=True) > k
        hi = torch.where(too_big, mid, hi)
        lo = torch.where(too_big, lo, mid)
    return 0.5 * (lo + hi)


class _SoftTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, tau: float, detach_lambda: bool):
        z = scores.double() / tau
        m = torch.sigmoid(z + _solve_lambda(z, k))
        ctx.save_for_backward(m)
        ctx.tau, ctx.detach_lambda = tau, detach_lambda
        return m.to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_m: torch.Tensor):
        (m,) = ctx.saved_tensors
        g = grad_m.double()
        w = m * (1.0 - m)
        if ctx.detach_lambda:
            grad = w * g
        else:
            w_sum = w.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
            grad = w * (g - (g * w).sum(dim=-1, keepdim=True) / w_sum)
        return (grad / ctx.tau).to(grad_m.dtype), None, None, None


def soft_topk(scores: torch.Tensor, k: int, tau: float = 0.1, detach_lambda: bool = False) -> torch.Tensor:
    """Soft block mask in (0, 1) with rows summing to k; all ones when k covers every block."""
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"soft_topk needs 1 <= k <= {n} key blocks, got k={k}")
    if tau <= 0:
        raise ValueError(f"soft_topk temperature tau must be > 0, got {tau}")
    if k == n:
        # λ = +∞: every block fully selected, and the mask no longer depends on the scores.
        return torch.ones_like(scores) + 0.0 * scores
    return _SoftTopK.apply(scores, k, tau, detach_lambda)
