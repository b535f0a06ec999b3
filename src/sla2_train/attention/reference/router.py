"""The learnable block router (docs/method.md, Router): pooled, projected scores and hard Top-k."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .blocks import mean_pool, pooled_block_mass, query_chunks, smooth_k
from .branches import scaled_scores


class BlockSelection(NamedTuple):
    mask: torch.Tensor  # bool [B, H, nq, nk], True = key block goes to the sparse (softmax) branch
    indices: torch.Tensor  # long [B, H, nq, k], selected key blocks of each query block, ascending


def router_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    proj_q: torch.Tensor,
    proj_k: torch.Tensor,
    block_q: int,
    block_k: int,
) -> torch.Tensor:
    """Block scores [B, H, nq, nk] = (Q̄ Wq)(K̄ Wk)ᵀ / √D.

    q, k: [B, H, N, D]; proj_q, proj_k: [H, D, D] applied as x @ W. K̄ pools the smoothed K.
    """
    d = q.shape[-1]
    q_bar = torch.einsum("bhnd,hde->bhne", mean_pool(q, block_q), proj_q.to(q.dtype))
    k_bar = torch.einsum("bhnd,hde->bhne", mean_pool(smooth_k(k), block_k), proj_k.to(k.dtype))
    return q_bar @ k_bar.transpose(-1, -2) / math.sqrt(d)


def topk_count(num_key_blocks: int, sparsity: float) -> int:
    """Blocks kept per query block: round((1 − sparsity) · nk), at least 1 and at most nk."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return max(1, min(num_key_blocks, round((1.0 - sparsity) * num_key_blocks)))


def hard_topk(scores: torch.Tensor, k: int) -> BlockSelection:
    """Row-wise Top-k of [B, H, nq, nk] scores as a mask and a sorted index list."""
    indices = scores.topk(k, dim=-1).indices.sort(dim=-1).values
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, indices, True)
    return BlockSelection(mask, indices)


def selected_mass(scores: torch.Tensor, mask: torch.Tensor, key_counts: torch.Tensor) -> torch.Tensor:
    """Router's own estimate of the softmax mass on the selected blocks: [B, H, nq] in (0, 1].

    A key block stands for `key_counts[j]` tokens that share its pooled score, so its share of the
    softmax is count · exp(score); the ragged last block weighs less. Used by the length-free α mode.
    """
    p = torch.softmax(scores + key_counts.to(scores.dtype).log(), dim=-1)
    return (p * mask.to(p.dtype)).sum(dim=-1)


def bestmass_selection(q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int, k_sel: int,
                       rows: int = 1024) -> tuple[BlockSelection, torch.Tensor]:
    """The oracle selection: each query block's `k_sel` key blocks holding the most true softmax mass (the upper
    bound on kept mass a router can reach), and the mass they keep [B, H, nq]. q, k: [B, H, N, D]; full
    attention in at least float32, `rows` query rows at a time (memory O(rows · N), compute O(N²))."""
    n = q.shape[-2]
    acc = torch.promote_types(q.dtype, torch.float32)
    parts = []
    for r, _ in query_chunks(n, block_q, rows):
        probs = torch.softmax(scaled_scores(q[:, :, r].to(acc), k.to(acc)), dim=-1)
        parts.append(pooled_block_mass(probs, block_q, block_k))
    mass = torch.cat(parts, dim=2)
    selection = hard_topk(mass, k_sel)
    return selection, (mass * selection.mask).sum(dim=-1)
