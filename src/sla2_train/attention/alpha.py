"""Parameterisations of α, the mixing ratio of the sparse and linear branches (docs/method.md, α).

Each maps the router's estimate m̂ [B, H, nq] of the softmax mass on the selected blocks to α,
broadcastable to [B, H, nq]. `per_block` ties a checkpoint to one sequence length; `per_head` and
`predicted` do not. Calibration (`init_from_mass`) takes the measured true mass rowsum(P⊙M) [H, nq]
and the router's estimate of it [H, nq], both averaged over calibration batches.
"""

from __future__ import annotations

import torch
from torch import nn

ALPHA_EPS = 1e-4  # keeps logit(α) finite when a measured mass is ~0 or ~1


def logit(p: torch.Tensor | float) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float32) if not torch.is_tensor(p) else p
    p = p.clamp(ALPHA_EPS, 1 - ALPHA_EPS)
    return torch.log(p) - torch.log1p(-p)


class PerHeadAlpha(nn.Module):
    mode = "per_head"
    needs_mass = False

    def __init__(self, num_heads: int, init: float, num_query_blocks: int | None = None):
        super().__init__()
        self.logit = nn.Parameter(logit(init).expand(num_heads).clone())

    def forward(self, mass: torch.Tensor | None) -> torch.Tensor:
        return torch.sigmoid(self.logit)[None, :, None]

    def check_length(self, num_query_blocks: int) -> None:
        pass

    @torch.no_grad()
    def init_from_mass(self, measured: torch.Tensor, estimated: torch.Tensor) -> None:
        self.logit.copy_(logit(measured.float().mean(dim=-1)))


class PerBlockAlpha(nn.Module):
    mode = "per_block"
    needs_mass = False

    def __init__(self, num_heads: int, init: float, num_query_blocks: int | None = None):
        super().__init__()
        if num_query_blocks is None:
            raise ValueError("alpha_mode='per_block' needs seq_len: α has one value per query block")
        self.logit = nn.Parameter(logit(init).expand(num_heads, num_query_blocks).clone())

    def forward(self, mass: torch.Tensor | None) -> torch.Tensor:
        return torch.sigmoid(self.logit)[None]

    def check_length(self, num_query_blocks: int) -> None:
        if num_query_blocks != self.logit.shape[-1]:
            raise ValueError(
                f"alpha_mode='per_block' was built for {self.logit.shape[-1]} query blocks but the input has "
                f"{num_query_blocks}; use alpha_mode='per_head' or 'predicted' for variable sequence lengths"
            )

    @torch.no_grad()
    def init_from_mass(self, measured: torch.Tensor, estimated: torch.Tensor) -> None:
        self.logit.copy_(logit(measured.float()))


class PredictedAlpha(nn.Module):
    """α = σ(w · logit(m̂) + b) per head; w = 1, b = 0 starts at α = m̂, the router's own estimate."""

    mode = "predicted"
    needs_mass = True

    def __init__(self, num_heads: int, init: float, num_query_blocks: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_heads))
        self.bias = nn.Parameter(torch.zeros(num_heads))

    def forward(self, mass: torch.Tensor | None) -> torch.Tensor:
        return torch.sigmoid(self.weight[:, None] * logit(mass) + self.bias[:, None])

    def check_length(self, num_query_blocks: int) -> None:
        pass

    @torch.no_grad()
    def init_from_mass(self, measured: torch.Tensor, estimated: torch.Tensor) -> None:
        """Shift b by the mean gap between the measured and the estimated mass, in logit space."""
        self.bias.copy_((logit(measured.float()) - logit(estimated.float())).mean(dim=-1))


ALPHA_MODES = {cls.mode: cls for cls in (PerHeadAlpha, PerBlockAlpha, PredictedAlpha)}


def build_alpha(mode: str, num_heads: int, init: float, num_query_blocks: int | None) -> nn.Module:
    if mode not in ALPHA_MODES:
        raise ValueError(f"unknown alpha_mode {mode!r}; choose one of {sorted(ALPHA_MODES)}")
    if not 0.0 < init < 1.0:
        raise ValueError(f"alpha_init must be in (0, 1), got {init}")
    return ALPHA_MODES[mode](num_heads, init, num_query_blocks)
