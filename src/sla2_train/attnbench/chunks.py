"""One captured layer walked a chunk of query rows at a time: full attention of the chunk's rows (the teacher) and
the two branches of every block mask measured on them, so memory is O(chunk · N), never O(N²) (a Wan2.1-1.3B
layer at 480p has N = 32,760).

Router masks are chosen once per capture, on all query blocks (the router pools every block); the best-mass
mask per chunk, from the chunk's true block mass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch

from sla2_train.attention import SLA2Attention
from sla2_train.attention import reference as ref
from sla2_train.attention.distill import hard_branches

from .metrics import Teacher

BESTMASS = "bestmass"
IDENTITY = "identity"  # the untrained router's masks (identity projections): SLA's pooled heuristic


class RouterMasks:
    """Hard Top-k masks of a router (an SLA2Attention's `_scores`) and, when `own_alpha`, the α that module runs
    with on them (its α parameters and mode, as at inference)."""

    def __init__(self, attention: SLA2Attention, own_alpha: bool):
        self.attention, self.own_alpha = attention, own_alpha

    def __call__(self, scores: torch.Tensor, k_sel: int, n_k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = ref.hard_topk(scores, k_sel).mask
        if not self.own_alpha:
            return mask, None
        a = self.attention
        return mask, a.alpha(a._mass(scores, mask, n_k)).float().expand(mask.shape[:3])


@dataclass
class Branches:
    """One mask on one chunk: mask [B, H, nb, nk], the router's own α [B, H, nb] (None for fitted or no α),
    and the exact branches O_s, O_l [B, H, R, D]."""

    sparsity: float
    name: str
    mask: torch.Tensor
    alpha: torch.Tensor | None
    o_s: torch.Tensor
    o_l: torch.Tensor


@dataclass
class Chunk:
    teacher: Teacher  # full attention of the chunk's rows (q holds those rows only)
    blocks: slice  # the chunk's query blocks
    items: list[Branches]


@torch.no_grad()
def walk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_q: int, block_k: int,
         measured: Mapping[float, Sequence[str]], routers: Mapping[str, RouterMasks],
         query_chunk: int = 1024) -> Iterator[Chunk]:
    """Chunks of one [B, H, N, D] capture (float32); `measured[s]` names the masks wanted at sparsity s: keys of
    `routers` or BESTMASS."""
    n = q.shape[-2]
    nk = ref.num_blocks(n, block_k)
    scores = {name: r.attention._scores(q, k) for name, r in routers.items()
              if any(name in names for names in measured.values())}
    whole = {(s, name): routers[name](scores[name], ref.topk_count(nk, s), n)
             for s, names in measured.items() for name in names if name != BESTMASS}
    for rows, blocks in ref.query_chunks(n, block_q, query_chunk):
        t = Teacher(q[:, :, rows], k, v, block_q, block_k)
        items = []
        for s, names in measured.items():
            for name in names:
                if name == BESTMASS:
                    mask, alpha = t.best_mask(ref.topk_count(nk, s)), None
                else:
                    mask, alpha = whole[(s, name)]
                    mask, alpha = mask[:, :, blocks], None if alpha is None else alpha[:, :, blocks]
                o_s, o_l = hard_branches(t.q, t.k, t.v, mask, block_q, block_k)
                items.append(Branches(s, name, mask, alpha, o_s, o_l))
        yield Chunk(t, blocks, items)
