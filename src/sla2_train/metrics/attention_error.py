"""How far SLA2's attention output is from full attention's."""

from __future__ import annotations

import torch


def relative_l1(approx: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Σ|approx − exact| / Σ|exact| (the per-layer error SLA and SLA2 report), computed in float32+."""
    dtype = torch.promote_types(exact.dtype, torch.float32)
    a, e = approx.to(dtype), exact.to(dtype)
    return (a - e).abs().sum() / e.abs().sum().clamp_min(torch.finfo(dtype).tiny)
