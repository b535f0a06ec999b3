"""What the untrained methods are fitted with, from captures of calibration trajectories (prompts not measured).

- α of the hard-mask α-mix, per (sparsity, layer, mask) and head, by the stage-1 recipe's fit (a
  `HardMaskFit` of attention/distill.py; conf/stage/distill.yaml's `calibrate_alpha.fit`): its statistics of
  every chunk are summed, so the fit is the one over all calibration captures together.
- SLA's output projection W (O = O_s + O_l·W, per head Dv×Dv) at the heuristic mask, by least squares:
  W = argmin Σ‖O_s + O_l W − O_full‖², what SLA's own MSE training of W converges to on these inputs
  (normal equations Σ O_lᵀO_l, Σ O_lᵀ(O_full − O_s), with a ridge of 1e-6 · tr/Dv for a singular O_lᵀO_l).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from .chunks import Chunk

RIDGE = 1e-6


class Calibration:
    """Sums over calibration chunks; `alpha(s, layer, mask)` [H] and `sla_proj(s, layer)` [H, Dv, Dv] solve them.
    `sla_mask` names the mask SLA's projection is fitted at (the heuristic router's)."""

    def __init__(self, fit, sla_mask: str):
        self.fit, self.sla_mask = fit, sla_mask
        self.stats: dict[tuple, torch.Tensor] = defaultdict(lambda: 0)
        self.gram: dict[tuple, torch.Tensor] = defaultdict(lambda: 0)
        self.cross: dict[tuple, torch.Tensor] = defaultdict(lambda: 0)

    @torch.no_grad()
    def add(self, layer: int, chunk: Chunk) -> None:
        t = chunk.teacher
        for b in chunk.items:
            stats = self.fit.statistics(t.full, b.o_s, b.o_l, t.block_q)
            self.stats[(b.sparsity, layer, b.name)] = self.stats[(b.sparsity, layer, b.name)] + self.fit.pooled(
                stats.double(), per_head=True)
            if b.name == self.sla_mask:
                key = (b.sparsity, layer)
                o_l = b.o_l.double()
                self.gram[key] = self.gram[key] + torch.einsum("bhnd,bhne->hde", o_l, o_l)
                self.cross[key] = self.cross[key] + torch.einsum("bhnd,bhne->hde", o_l, (t.full - b.o_s).double())

    def alpha(self, sparsity: float, layer: int, mask: str) -> torch.Tensor:
        """Per-head α [H] of `mask`'s α-mix."""
        return self.fit.solve(self.stats[(sparsity, layer, mask)])[:, 0].float()

    def sla_proj(self, sparsity: float, layer: int) -> torch.Tensor:
        gram, cross = self.gram[(sparsity, layer)], self.cross[(sparsity, layer)]
        dv = gram.shape[-1]
        ridge = RIDGE * gram.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-30)[:, None, None] / dv
        eye = torch.eye(dv, dtype=gram.dtype, device=gram.device)
        return torch.linalg.solve(gram + ridge * eye, cross).float()
