"""SLA2 (and the SLA baseline) assembled from the branches: the oracle for every fast path."""

from __future__ import annotations

import torch

from .blocks import expand_query_blocks
from .branches import (
    linear_attention_complement,
    soft_linear_attention,
    soft_sparse_attention,
    sparse_attention,
)
from .memory import check_dense_fits
from .quant import fake_quant_sparse_attention, straight_through


def effective_alpha(alpha: torch.Tensor, complement_empty: torch.Tensor) -> torch.Tensor:
    """α per query block [B, H, nq], forced to 1 where the linear branch has no blocks.

    α stands for the softmax mass on the selected blocks; with every block selected that mass is
    exactly 1. A learnt α < 1 there would only shrink the output (O_l = 0), so selecting every block
    must give full attention whatever α has learnt. With hard Top-k this happens iff k = nk.
    """
    a = alpha.expand(complement_empty.shape)
    return torch.where(complement_empty, torch.ones_like(a), a)


def alpha_mix(o_s: torch.Tensor, o_l: torch.Tensor, alpha: torch.Tensor, block_q: int) -> torch.Tensor:
    """O = α ⊙ O_s + (1 − α) ⊙ O_l with α per query block (broadcastable to [B, H, nq])."""
    nq = -(-o_s.shape[-2] // block_q)
    a = expand_query_blocks(alpha.to(o_s.dtype).expand(*o_s.shape[:2], nq), o_s.shape[-2], block_q)
    return a * o_s + (1.0 - a) * o_l


def sla2_sparse_branch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask_blocks: torch.Tensor,
    block_q: int,
    block_k: int,
    quant: bool = False,
) -> torch.Tensor:
    """O_s; with quant the forward is the fake-quant low-bit value and the gradient the exact one's."""
    o_s, _ = sparse_attention(q, k, v, mask_blocks, block_q, block_k)
    if quant:
        o_s = straight_through(o_s, fake_quant_sparse_attention(q, k, v, mask_blocks, block_q, block_k)[0])
    return o_s


def sla2_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask_blocks: torch.Tensor,
    alpha: torch.Tensor,
    block_q: int,
    block_k: int,
    quant: bool = False,
) -> torch.Tensor:
    """SLA2 with a hard block mask (bool [B, H, nq, nk]); q, k, v [B, H, N, D]."""
    check_dense_fits(q, k)
    o_s = sla2_sparse_branch(q, k, v, mask_blocks, block_q, block_k, quant)
    o_l = linear_attention_complement(q, k, v, mask_blocks, block_q, block_k)
    return alpha_mix(o_s, o_l, effective_alpha(alpha, mask_blocks.all(dim=-1)), block_q)


def sla2_attention_soft(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask_logits: torch.Tensor,
    alpha: torch.Tensor,
    block_q: int,
    block_k: int,
) -> torch.Tensor:
    """SLA2 with the soft block mask m = σ(mask_logits) (SoftTop-k, stage 1; ±∞ logits give a hard mask).

    Dense O(N²). Taking the logits, not m, keeps log m and 1 − m exact where m underflows (soft_topk.py).
    """
    check_dense_fits(q, k)
    o_s = soft_sparse_attention(q, k, v, mask_logits, block_q, block_k)
    o_l = soft_linear_attention(q, k, v, mask_logits, block_q, block_k)
    return alpha_mix(o_s, o_l, effective_alpha(alpha, (torch.sigmoid(mask_logits) == 1).all(dim=-1)), block_q)


def sla_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask_blocks: torch.Tensor,
    proj: torch.Tensor,
    block_q: int,
    block_k: int,
) -> torch.Tensor:
    """The SLA (v1) baseline: O_s + proj(O_l), the linear branch over the complement; proj [H, Dv, Dv]."""
    check_dense_fits(q, k)
    o_s, _ = sparse_attention(q, k, v, mask_blocks, block_q, block_k)
    o_l = linear_attention_complement(q, k, v, mask_blocks, block_q, block_k)
    return sla_mix(o_s, o_l, proj)


def sla_mix(o_s: torch.Tensor, o_l: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """SLA's output O_s + O_l·W from its two branches [B, H, N, Dv], with W [H, Dv, Dv] per head."""
    return o_s + torch.einsum("bhnd,hde->bhne", o_l, proj.to(o_l.dtype))
