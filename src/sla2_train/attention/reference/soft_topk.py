"""SoftTop-k (docs/method.md): m_ij = σ(u_ij) with logits u_ij = s_ij/τ + λ_i, λ_i chosen so each row sums to k.

The mask is handed around as its logits u: the sparse branch needs log m = log σ(u) and the linear branch
1 − m = σ(−u), both exact from u in any dtype, while m itself underflows to 0 in float32 once u < −104
(peaked attention at τ = 0.1 gets there), and log(0) turns the router's gradient into NaN.

λ is found by bisection (solve_lambda here; on CUDA the one-launch kernel sla2_kernels.soft_topk_lambda runs the
same steps, chosen by attention/backend.py); its gradient is exact by the implicit function theorem, so the
row-sum constraint also holds to first order in the backward. With w = m(1−m) and g = ∂L/∂u:
    ∂λ_i/∂s_il = −w_il / (τ Σ_j w_ij)
    ∂L/∂s_il   = (1/τ) · (g_il − w_il Σ_j g_ij / Σ_j w_ij)
Detaching λ drops the second term. (Through m, g = w ⊙ ∂L/∂m gives the familiar form.)
"""

from __future__ import annotations

from typing import Callable

import torch
# The kernel's own constants (a module that imports no triton): one definition for the kernel and this twin.
from sla2_kernels.constants import BISECTION_STEPS, BRACKET_MARGIN

LambdaSolver = Callable[[torch.Tensor, int], torch.Tensor]


def solve_lambda(z: torch.Tensor, k: int) -> torch.Tensor:
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


class _SoftTopKLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, tau: float, detach_lambda: bool, solve: LambdaSolver):
        z = scores.double() / tau
        u = z + solve(z, k)
        ctx.save_for_backward(u)
        ctx.tau, ctx.detach_lambda = tau, detach_lambda
        return u.to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_u: torch.Tensor):
        (u,) = ctx.saved_tensors
        g = grad_u.double()
        if ctx.detach_lambda:
            grad = g
        else:
            w = torch.sigmoid(u) * torch.sigmoid(-u)  # m(1−m) without the cancellation of 1 − m near m = 1
            w_sum = w.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
            grad = g - w * g.sum(dim=-1, keepdim=True) / w_sum
        return (grad / ctx.tau).to(grad_u.dtype), None, None, None, None


def _check(n: int, k: int, tau: float) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"soft_topk needs 1 <= k <= {n} key blocks, got k={k}")
    if tau <= 0:
        raise ValueError(f"soft_topk temperature tau must be > 0, got {tau}")


def soft_topk_logits(scores: torch.Tensor, k: int, tau: float = 0.1, detach_lambda: bool = False,
                     solve: LambdaSolver = solve_lambda) -> torch.Tensor:
    """Logits u of the soft block mask m = σ(u); rows of σ(u) sum to k. +∞ everywhere when k covers every block.

    solve(z, k) finds λ (float64 [..., 1]); the default is this file's bisection, backend.lambda_solver picks."""
    _check(scores.shape[-1], k, tau)
    if k == scores.shape[-1]:
        # λ = +∞: every block fully selected, and the mask no longer depends on the scores.
        return torch.full_like(scores, float("inf")) + 0.0 * scores
    return _SoftTopKLogits.apply(scores, k, tau, detach_lambda, solve)


def soft_topk(scores: torch.Tensor, k: int, tau: float = 0.1, detach_lambda: bool = False) -> torch.Tensor:
    """Soft block mask in [0, 1] with rows summing to k; all ones when k covers every block.

    Entries may underflow to exactly 0 in float32: take logs from `soft_topk_logits`, never from this.
    """
    return torch.sigmoid(soft_topk_logits(scores, k, tau, detach_lambda))
