"""What the untrained methods are fitted with, from captures of calibration trajectories (prompts not measured).

- α of the hard-mask α-mix, per (sparsity, layer, mask) and head, by the stage-1 recipe's fit (a
  `HardMaskFit` of attention/distill.py; conf/stage/distill.yaml's `calibrate_alpha.fit`): its statistics of
  every chunk are summed, so the fit is the one over all calibration captures together.
- SLA's output projection W (O = O_s + O_l·W, per head Dv×Dv) at the heuristic mask, by ridge regression:
  W = argmin Σ‖O_s + O_l W − O_full‖² + λ‖W‖², what SLA's own MSE training of W converges to on these inputs
  (normal equations Σ O_lᵀO_l, Σ O_lᵀ(O_full − O_s)). λ is chosen per (sparsity, layer, head) by leaving one
  calibration prompt out at a time: O_l's columns are nearly collinear, and the unregularised W fitted on a few
  prompts overfits them by several times the sparse branch's own error on other prompts. W = 0 (the sparse
  branch alone, λ → ∞) is one of the choices, so the fit never does worse than that on the left-out prompts.
  With a single calibration prompt, one of its sampling steps (both guidance branches) is left out at a time
  instead: the steps share the prompt, so the choice is less strict, and a step's two branches are near copies
  of each other, so leaving one branch out let the other predict it and chose the smallest λ, as choosing it
  blindly did (SLA's row at 7.5 relative L1 in layer 0 against the sparse branch's 0.41; testbed, 128×256).
  With a single capture nothing can be held out, and W = 0 (SLA as its sparse branch) is taken.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from .chunks import Chunk

# λ = RIDGES[i] · tr(O_lᵀO_l)/Dv (the scale of O_l's features); inf: W = 0
RIDGES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, float("inf"))


def ridge_solve(gram: torch.Tensor, cross: torch.Tensor, ridge: torch.Tensor) -> torch.Tensor:
    """W [H, Dv, Dv] = (G + λ·tr(G)/Dv·I)⁻¹ C per head; gram, cross [H, Dv, Dv], ridge [H] (inf → W = 0)."""
    dv = gram.shape[-1]
    finite = torch.isfinite(ridge)
    scale = gram.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-30) / dv
    lam = torch.where(finite, ridge, torch.full_like(ridge, RIDGES[0])) * scale  # > 0 even where O_l is all zero
    eye = torch.eye(dv, dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(gram + lam[:, None, None] * eye, cross)
    return torch.where(finite[:, None, None], w, torch.zeros_like(w))


def held_out_error(w: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """Σ‖T − O_l W‖² − Σ‖T‖² per head [H] on data with statistics (G = O_lᵀO_l, C = O_lᵀT)."""
    return torch.einsum("hdj,hdf,hfj->h", w, gram, w) - 2 * torch.einsum("hde,hde->h", w, cross)


def choose_ridge(grams: list[torch.Tensor], crosses: list[torch.Tensor]) -> torch.Tensor:
    """Per head the entry of RIDGES with the least squared error summed over the folds, each fold predicted by the
    W fitted on the others. grams, crosses: per fold [H, Dv, Dv]; at least two folds."""
    gram, cross = sum(grams), sum(crosses)
    heads = gram.shape[0]
    errors = []
    for r in RIDGES:
        ridge = torch.full((heads,), r, dtype=gram.dtype, device=gram.device)
        errors.append(sum(held_out_error(ridge_solve(gram - g, cross - c, ridge), g, c)
                          for g, c in zip(grams, crosses)))
    best = torch.stack(errors).argmin(0)
    return torch.tensor(RIDGES, dtype=gram.dtype, device=gram.device)[best]


class Calibration:
    """Sums over calibration chunks; `alpha(s, layer, mask)` [H] and `sla_proj(s, layer)` [H, Dv, Dv] solve them.
    `sla_mask` names the mask SLA's projection is fitted at (the heuristic router's). `fold` is the calibration
    prompt being captured (set by the caller before each): SLA's λ is chosen by leaving one prompt out, or one
    sampling step (`where`: step and branch) when there is a single prompt."""

    def __init__(self, fit, sla_mask: str):
        self.fit, self.sla_mask = fit, sla_mask
        self.fold = 0
        self.stats: dict[tuple, torch.Tensor] = defaultdict(lambda: 0)
        # (sparsity, layer) → (prompt, where) → sums
        self.gram: dict[tuple, dict[tuple, torch.Tensor]] = defaultdict(lambda: defaultdict(lambda: 0))
        self.cross: dict[tuple, dict[tuple, torch.Tensor]] = defaultdict(lambda: defaultdict(lambda: 0))
        self.sla_ridge: dict[tuple, torch.Tensor] = {}  # (sparsity, layer) → the chosen RIDGES entry per head

    @torch.no_grad()
    def add(self, layer: int, chunk: Chunk, where) -> None:
        t = chunk.teacher
        for b in chunk.items:
            stats = self.fit.statistics(t.full, b.o_s, b.o_l, t.block_q)
            self.stats[(b.sparsity, layer, b.name)] = self.stats[(b.sparsity, layer, b.name)] + self.fit.pooled(
                stats.double(), per_head=True)
            if b.name == self.sla_mask:
                gram, cross = self.gram[(b.sparsity, layer)], self.cross[(b.sparsity, layer)]
                o_l = b.o_l.double()
                fold = (self.fold, where)
                gram[fold] = gram[fold] + torch.einsum("bhnd,bhne->hde", o_l, o_l)
                cross[fold] = cross[fold] + torch.einsum("bhnd,bhne->hde", o_l, (t.full - b.o_s).double())

    def alpha(self, sparsity: float, layer: int, mask: str) -> torch.Tensor:
        """Per-head α [H] of `mask`'s α-mix."""
        return self.fit.solve(self.stats[(sparsity, layer, mask)])[:, 0].float()

    def _folds(self, sums: dict[tuple, torch.Tensor]) -> list[torch.Tensor]:
        """Per prompt when there are several, else per sampling step of the one prompt (a step's guidance
        branches together), else per capture."""
        for part in (lambda key: key[0], lambda key: key[1][0]):  # the prompt; the step of (step, branch)
            grouped: dict[object, torch.Tensor] = defaultdict(lambda: 0)
            for key, value in sums.items():
                grouped[part(key)] = grouped[part(key)] + value
            if len(grouped) > 1:
                return list(grouped.values())
        return list(sums.values())

    def sla_proj(self, sparsity: float, layer: int) -> torch.Tensor:
        """SLA's W [H, Dv, Dv], fitted on every calibration capture with the λ chosen by leaving one fold out (with
        a single capture, W = 0: nothing to validate a fit on)."""
        grams, crosses = self._folds(self.gram[(sparsity, layer)]), self._folds(self.cross[(sparsity, layer)])
        gram, cross = sum(grams), sum(crosses)
        if len(grams) > 1:
            ridge = choose_ridge(grams, crosses)
        else:
            ridge = torch.full((gram.shape[0],), float("inf"), dtype=gram.dtype, device=gram.device)
        self.sla_ridge[(sparsity, layer)] = ridge
        return ridge_solve(gram, cross, ridge).float()
