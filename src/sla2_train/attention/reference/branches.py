"""The two SLA2 branches in plain PyTorch, on [B, H, N, D] tensors, in the input's dtype.

Sparse branch: softmax restricted to the selected blocks (docs/method.md).
Linear branch: φ(Q)φ(K)ᵀ over the complement blocks, row-normalised, φ = softmax over head_dim;
computed from per-key-block sums as totals minus selected (docs/method.md), which is how the kernels do it.
"""

from __future__ import annotations

import math

import torch

from .blocks import expand_block_mask, num_blocks
from .memory import check_dense_fits


def scaled_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense softmax attention: the distillation teacher and the all-blocks limit of SLA2."""
    check_dense_fits(q, k)
    return torch.softmax(scaled_scores(q, k), dim=-1) @ v


def masked_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(S + log_weights) V and its log-sum-exp [B, H, N]; log_weights is -inf where masked out.

    A row with nothing selected cannot occur (Top-k keeps >= 1 block), so no all--inf guard is needed.
    """
    s = scaled_scores(q, k) + log_weights
    lse = torch.logsumexp(s, dim=-1)
    return torch.exp(s - lse[..., None]) @ v, lse


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_blocks: torch.Tensor, block_q: int, block_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the selected blocks only. mask_blocks: bool [B, H, nq, nk]. Returns (O_s, lse)."""
    tok = expand_block_mask(mask_blocks, q.shape[-2], k.shape[-2], block_q, block_k)
    log_w = torch.zeros(tok.shape, dtype=q.dtype, device=q.device).masked_fill(~tok, float("-inf"))
    return masked_softmax_attention(q, k, v, log_w)


def phi(x: torch.Tensor) -> torch.Tensor:
    """Feature map of the linear branch: softmax over the head dimension."""
    return torch.softmax(x, dim=-1)


def weighted_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Dense form rownorm(φ(Q)φ(K)ᵀ ⊙ W) V for token weights W [.., N, N]; a row whose weights are all 0 gives 0."""
    a = (phi(q) @ phi(k).transpose(-1, -2)) * weights
    den = a.sum(dim=-1, keepdim=True)
    return torch.where(den > 0, (a @ v) / torch.where(den > 0, den, 1), 0)


def linear_block_sums(k: torch.Tensor, v: torch.Tensor, block_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per key block h_j = φ(K_j)ᵀ V_j [B, H, nk, D, Dv] and z_j = colsum φ(K_j) [B, H, nk, D].

    Padded tokens of a ragged last block are zeroed after φ: φ of a zero row is 1/D, not 0.
    """
    b, h, n, d = k.shape
    nk = num_blocks(n, block_k)
    pad = nk * block_k - n
    fk = torch.nn.functional.pad(phi(k), (0, 0, 0, pad)).view(b, h, nk, block_k, d)
    vb = torch.nn.functional.pad(v, (0, 0, 0, pad)).view(b, h, nk, block_k, v.shape[-1])
    return fk.transpose(-1, -2) @ vb, fk.sum(dim=-2)


def linear_attention_complement(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_blocks: torch.Tensor, block_q: int, block_k: int
) -> torch.Tensor:
    """O_l over the complement of the selected blocks, by totals minus selected (docs/method.md).

    Sums run in at least float32. A query block that selected every key block gets O_l = 0 exactly:
    total minus everything is only zero up to rounding, and 0/0 would amplify that rounding.
    """
    b, h, n, d = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    hb, zb = linear_block_sums(k.to(acc), v.to(acc), block_k)
    sel = mask_blocks.to(acc)  # [B, H, nq, nk]
    h_i = hb.sum(dim=2, keepdim=True) - torch.einsum("bhij,bhjde->bhide", sel, hb)  # [B, H, nq, D, Dv]
    z_i = zb.sum(dim=2, keepdim=True) - torch.einsum("bhij,bhjd->bhid", sel, zb)  # [B, H, nq, D]
    nq = mask_blocks.shape[-2]
    fq = torch.nn.functional.pad(phi(q.to(acc)), (0, 0, 0, nq * block_q - n)).view(b, h, nq, block_q, d)
    num = fq @ h_i  # [B, H, nq, bq, Dv]
    den = (fq @ z_i[..., None]).squeeze(-1)  # [B, H, nq, bq]
    complement_empty = mask_blocks.all(dim=-1)[..., None, None]
    # Padded query rows (den = 0) and empty complements are discarded below; a safe denominator keeps
    # them finite, since autograd through torch.where multiplies the discarded branch's grad by 0.
    den = torch.where(complement_empty[..., 0] | (den == 0), 1, den)
    o = torch.where(complement_empty, 0, num / den[..., None])
    return o.reshape(b, h, nq * block_q, -1)[:, :, :n].to(q.dtype)


def soft_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logits_blocks: torch.Tensor, block_q: int, block_k: int
) -> torch.Tensor:
    """softmax(S + log m) V for the soft block mask m = σ(logits) (dense, O(N²): router training only).

    log m is taken as logsigmoid(logits): finite wherever the logit is, even where m itself underflows.
    """
    tok = expand_block_mask(logits_blocks, q.shape[-2], k.shape[-2], block_q, block_k)
    return masked_softmax_attention(q, k, v, torch.nn.functional.logsigmoid(tok.to(q.dtype)))[0]


def soft_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logits_blocks: torch.Tensor, block_q: int, block_k: int
) -> torch.Tensor:
    """Linear branch weighted by 1 − m = σ(−logits) and row-normalised (dense, O(N²): router training only)."""
    tok = expand_block_mask(logits_blocks, q.shape[-2], k.shape[-2], block_q, block_k)
    return weighted_linear_attention(q, k, v, torch.sigmoid(-tok.to(q.dtype)))
