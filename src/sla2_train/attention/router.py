"""The learnable router's parameters (docs/method.md, Router): one (proj_q, proj_k) pair per head."""

from __future__ import annotations

import torch
from torch import nn

from .reference import router_scores


class BlockRouter(nn.Module):
    """Per-head d×d projections of pooled Q and K, initialised to identity.

    At identity the scores rank key blocks exactly as SLA's pooled-attention heuristic does, so an
    untrained router is the SLA router. `learnable=False` keeps the projections as buffers (SLA baseline).
    """

    def __init__(self, num_heads: int, head_dim: int, learnable: bool = True):
        super().__init__()
        eye = torch.eye(head_dim).expand(num_heads, head_dim, head_dim).clone()
        if learnable:
            self.proj_q = nn.Parameter(eye.clone())
            self.proj_k = nn.Parameter(eye)
        else:
            self.register_buffer("proj_q", eye.clone())
            self.register_buffer("proj_k", eye)

    def forward(self, q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int) -> torch.Tensor:
        """Block scores [B, H, nq, nk] for q, k [B, H, N, D]."""
        return router_scores(q, k, self.proj_q, self.proj_k, block_q, block_k)
