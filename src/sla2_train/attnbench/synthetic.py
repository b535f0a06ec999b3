"""Video-like attention without a video model: a fixed multi-head "layer" reading varying smooth content.

Each head follows one regime (how its q, k are built before Wan's 3D RoPE):
- a position part, the same vector p for every token in q and k: RoPE turns q·k into Σ_pairs |p|² cos(θ Δ),
  a kernel peaked at zero offset, so a strong position part makes attention local and peaked;
- a content part c(x) A from a smooth random field c on the grid: similar content attends to similar content
  anywhere in the video (with A_k ≈ A_q);
- global tokens: a few positions (chosen by the content) whose keys carry a large component in the slowest
  rotation pairs, which every query reads too, so every query attends to them.
The layer's weights (A, p, global direction) come from `model_seed`; the content field and the global tokens'
positions from the content seed, so a train/held-out split by content seed never shares a content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .rope import apply_wan_rope, slow_pairs, wan_rope_tables

CONTENT_CHANNELS = 32
CONTENT_MODES = 24  # Fourier modes per content field
MAX_CYCLES = 2.0  # the field's highest frequency, in cycles across the grid: smooth content


@dataclass(frozen=True)
class Regime:
    """Logit scales of one head's parts (q·k/√D spans roughly a few times the largest scale)."""

    position: float = 0.0
    content: float = 0.0
    global_tokens: int = 0
    global_scale: float = 0.0


REGIMES = {
    "local": Regime(position=1.8, content=0.3),
    "diffuse": Regime(position=0.25, content=0.2),
    "global": Regime(position=0.45, content=0.25, global_tokens=4, global_scale=3.0),
    "content": Regime(position=0.2, content=1.0),
}


def regime(name: str) -> Regime:
    if name not in REGIMES:
        raise ValueError(f"unknown attention regime {name!r}; choose from {sorted(REGIMES)}")
    return REGIMES[name]


def _grid_positions(grid: tuple[int, int, int]) -> torch.Tensor:
    """[N, 3] positions in [0, 1) per axis, frame-major (Wan's token order)."""
    axes = [torch.arange(n, dtype=torch.float64) / n for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def smooth_field(grid: tuple[int, int, int], seed: int, channels: int = CONTENT_CHANNELS) -> torch.Tensor:
    """[N, channels] smooth random content: each channel a random mix of low-frequency Fourier modes."""
    g = torch.Generator().manual_seed(seed)
    freqs = (torch.rand(CONTENT_MODES, 3, generator=g, dtype=torch.float64) * 2 - 1) * MAX_CYCLES
    phases = torch.rand(CONTENT_MODES, generator=g, dtype=torch.float64) * 2 * math.pi
    modes = torch.cos(2 * math.pi * _grid_positions(grid) @ freqs.T + phases)  # [N, modes]
    field = modes @ torch.randn(CONTENT_MODES, channels, generator=g, dtype=torch.float64)
    return (field - field.mean(0)) / field.std(0)


class SyntheticLayer:
    """One attention layer of `len(regimes)` heads on a (frames, height, width) grid; q, k, v [1, H, N, D]."""

    def __init__(self, grid: tuple[int, int, int], regimes: list[str], head_dim: int = 128, model_seed: int = 0):
        self.grid, self.head_dim = tuple(grid), head_dim
        self.regimes = [regime(r) for r in regimes]
        self.names = list(regimes)
        g = torch.Generator().manual_seed(model_seed)
        h, c, d = len(regimes), CONTENT_CHANNELS, head_dim
        rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
        self.a_q = rnd(h, c, d) / math.sqrt(c)
        self.a_k = self.a_q + 0.5 * rnd(h, c, d) / math.sqrt(c)  # content attends to similar content
        self.a_v = rnd(h, c, d) / math.sqrt(c)
        self.p = rnd(h, d)
        slow = slow_pairs(d)
        self.g_dir = torch.zeros(h, d, dtype=torch.float64)
        self.g_dir[:, slow] = rnd(h, slow.numel())
        self.g_dir /= self.g_dir.norm(dim=-1, keepdim=True)
        self.tables = wan_rope_tables(self.grid, d)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    def sample(self, content_seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v) [1, H, N, D] for one content; deterministic in (model_seed, content_seed)."""
        n, d = self.num_tokens, self.head_dim
        c = smooth_field(self.grid, content_seed)
        g = torch.Generator().manual_seed(content_seed + 7_919)
        qs, ks, vs = [], [], []
        for h, r in enumerate(self.regimes):
            q = r.content * c @ self.a_q[h] + r.position * self.p[h]
            k = r.content * c @ self.a_k[h] + r.position * self.p[h]
            if r.global_tokens:
                where = torch.randperm(n, generator=g)[: r.global_tokens]
                q = q + r.global_scale * self.g_dir[h]
                k[where] += r.global_scale * self.g_dir[h] * math.sqrt(d)
            qs.append(q)
            ks.append(k)
            vs.append(c @ self.a_v[h] + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64))
        q, k, v = (torch.stack(x, 1)[None] for x in (qs, ks, vs))  # [1, N, H, D]
        q, k = apply_wan_rope(q, self.tables), apply_wan_rope(k, self.tables)
        return tuple(t.transpose(1, 2).contiguous().to(dtype) for t in (q, k, v))
