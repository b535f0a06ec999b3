"""Hard-Top-k quality of a block mask against full attention, per head (the numbers stage 1 is judged by).

For one input and one mask M (k key blocks per query block):
- rel_l1(O) = Σ|O − O_full| / Σ|O_full| for sparse-only O_s and for SLA2 α O_s + (1 − α) O_l;
- recall = |M ∩ M_best| / k, M_best the k key blocks of each query block holding the most true softmax mass;
- mass = the mean over rows of rowsum(P ⊙ M), the softmax mass the mask keeps (what α stands for).
"""

from __future__ import annotations

import torch

from sla2_train.attention import reference as ref
from sla2_train.attention.distill import hard_branches


class Teacher:
    """Full attention of one [B, H, N, D] input, and the true pooled block mass (float32)."""

    def __init__(self, q, k, v, block_q: int, block_k: int):
        self.q, self.k, self.v = q.float(), k.float(), v.float()
        self.block_q, self.block_k = block_q, block_k
        self.probs = torch.softmax(ref.scaled_scores(self.q, self.k), dim=-1)
        self.full = self.probs @ self.v
        self.block_mass = ref.pooled_block_mass(self.probs, block_q, block_k)

    def best_mask(self, k_sel: int) -> torch.Tensor:
        return ref.hard_topk(self.block_mass, k_sel).mask


def l1_parts(o: torch.Tensor, full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ|O − O_full|, Σ|O_full|) per head [H], summed over batch, tokens and channels: sums over several inputs
    (or row chunks of one) add up to the relative L1 of all of them together."""
    return (o - full).abs().sum(dim=(0, 2, 3)), full.abs().sum(dim=(0, 2, 3))


def rel_l1(o: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Per head [H], summed over batch, tokens and channels."""
    num, den = l1_parts(o, full)
    return num / den


def mask_metrics(t: Teacher, mask: torch.Tensor, alpha: torch.Tensor, best: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head metrics [H] of mask [B, H, nq, nk] with α [B, H, nq] (or broadcastable)."""
    o_s, o_l = hard_branches(t.q, t.k, t.v, mask, t.block_q, t.block_k)
    nq = mask.shape[-2]
    a = ref.effective_alpha(alpha.float().expand(*mask.shape[:2], nq), mask.all(-1))
    sla2 = ref.alpha_mix(o_s, o_l, a, t.block_q)
    k_sel = mask.sum(-1).float()
    tok = ref.expand_block_mask(mask, t.q.shape[-2], t.k.shape[-2], t.block_q, t.block_k)
    return {
        "sparse_l1": rel_l1(o_s, t.full),
        "sla2_l1": rel_l1(sla2, t.full),
        "recall": ((mask & best).sum(-1) / k_sel).mean(dim=(0, 2)),
        "mass": (t.probs * tok).sum(-1).mean(dim=(0, 2)),
        "alpha": a.mean(dim=(0, 2)),
    }


MIN_GAP = 0.02  # a heuristic within 2% of best-mass leaves no gap worth a ratio


def gap_closed(err_identity: float, err_learned: float, err_best: float, min_gap: float = MIN_GAP) -> float | None:
    """(err_identity − err_learned) / (err_identity − err_best); None where the heuristic is within `min_gap`
    (relative) of best-mass or better than it (then the ratio measures noise, not routing)."""
    gap = err_identity - err_best
    return None if gap <= min_gap * err_identity else (err_identity - err_learned) / gap
