"""SoftTop-k's threshold λ, host side: one launch of soft_topk_kernels.soft_topk_lambda_kernel."""

from __future__ import annotations

import torch

from . import launch
from .checks import check_topk, fail, soft_topk_unsupported
from .constants import BISECTION_STEPS, BRACKET_MARGIN
from .soft_topk_kernels import soft_topk_lambda_kernel
from .tuning import SOFT_TOPK_WARPS


def soft_topk_lambda(z: torch.Tensor, k: int) -> torch.Tensor:
    """λ float64 [..., 1] with Σ_j σ(z_j + λ) = k on each row of the logits z [..., n] (computed in float64), by
    the same BISECTION_STEPS halvings of the same bracket as the PyTorch twin."""
    if not isinstance(z, torch.Tensor) or z.dim() < 1 or z.shape[-1] < 1:
        fail(f"soft_topk_lambda needs logits [..., n] with n >= 1, got {tuple(getattr(z, 'shape', ()))}")
    n = z.shape[-1]
    why = soft_topk_unsupported(n)
    if why:
        fail(why)
    check_topk(k, n)
    z = z.detach().to(torch.float64).contiguous()
    lam = launch.empty(z.shape[:-1] + (1,), device=z.device, dtype=torch.float64)
    rows = lam.numel()
    if rows:
        launch.run("soft_topk_lambda", soft_topk_lambda_kernel, (rows,), z, lam, n, float(k),
                   NP=launch.next_power_of_2(n), STEPS=BISECTION_STEPS,
                   MARGIN=BRACKET_MARGIN, num_warps=SOFT_TOPK_WARPS)
    return lam
