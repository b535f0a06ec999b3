"""Wan's 3D rotary embedding on a (frames, height, width) token grid, from diffusers' own module."""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from sla2_train.models.sla2_processor import apply_rotary_emb


def wan_rope_tables(grid: tuple[int, int, int], head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [1, N, 1, D] at Wan's frequencies (θ = 10000, head_dim split t/h/w as Wan splits it)."""
    rope = WanRotaryPosEmbed(head_dim, (1, 1, 1), max_seq_len=max(1024, *grid))
    return rope(torch.empty(1, 1, *grid))


def apply_wan_rope(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate x [B, N, H, D] (tokens in frame-major grid order) exactly as Wan's self-attention does."""
    cos, sin = tables
    return apply_rotary_emb(x.double(), cos.double(), sin.double()).to(x.dtype)


def slow_pairs(head_dim: int, per_axis: int = 2) -> torch.Tensor:
    """Channel indices of the `per_axis` lowest-frequency rotation pairs of each axis: they barely rotate
    across the grid, so a component there reads the same at every position (how global tokens survive RoPE)."""
    h_dim = 2 * (head_dim // 6)
    t_dim = head_dim - 2 * h_dim
    ends = (t_dim, t_dim + h_dim, head_dim)
    pairs = [end - 2 * (i + 1) for end in ends for i in range(per_axis)]
    return torch.tensor(sorted(c for p in pairs for c in (p, p + 1)))
