"""SLA2 from the router's index lists, in either layout: the reference implementation of the custom ops
(sla2_train.attention.ops runs these on CPU; the kernels of sla2_kernels on CUDA).

q, k, v are [B, H, N, D] ("bhnd") or [B, N, H, D] ("bnhd"); the arithmetic runs in at least float32 (float64
stays float64). No input validation here: the callers validate (SLA2Attention at its boundary, the public
wrappers of sla2_train.attention.backend for direct calls).
"""

from __future__ import annotations

import torch

from .blocks import num_blocks
from .branches import linear_attention_complement, sparse_attention
from .combine import alpha_mix
from .memory import check_dense_fits
from .quant import fake_quant_sparse_attention
from .router import hard_topk, router_scores


def bhnd(t: torch.Tensor, layout: str) -> torch.Tensor:
    """t as a [B, H, N, D] view."""
    return t.transpose(1, 2) if layout == "bnhd" else t


def dims(q: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    b, h, n, d = bhnd(q, layout).shape
    return b, h, n, d


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: float64 stays float64 (gradcheck), bf16/fp16 compute in float32 as the kernels do."""
    return torch.promote_types(dtype, torch.float32)


def index_mask(indices: torch.Tensor, nk: int) -> torch.Tensor:
    """bool [B, H, nq, nk] block mask of an index list [B, H, nq, topk]."""
    shape = (*indices.shape[:-1], nk)
    return torch.zeros(shape, dtype=torch.bool, device=indices.device).scatter_(-1, indices.long(), True)


def block_alpha(alpha: torch.Tensor, b: int, h: int, nq: int, all_selected: bool) -> torch.Tensor:
    """α as [B, H, nq] in at least float32, forced to 1 when every key block is selected (combine.effective_alpha)."""
    if all_selected:
        return torch.ones((), dtype=torch.float32, device=alpha.device).expand(b, h, nq)
    return alpha.to(acc_dtype(alpha.dtype)).expand(b, h, nq)


def indexed_router(q, k, proj_q, proj_k, block_q: int, block_k: int, topk: int, layout: str):
    """(scores [B, H, nq, nk] in at least float32, indices int32 [B, H, nq, topk] ascending)."""
    acc = acc_dtype(q.dtype)
    scores = router_scores(bhnd(q, layout).to(acc), bhnd(k, layout).to(acc), proj_q, proj_k, block_q, block_k)
    return scores, hard_topk(scores, topk).indices.to(torch.int32)


def indexed_forward(q, k, v, indices, alpha, block_q: int, block_k: int, quant: bool, layout: str,
                    sparse_out: bool = True):
    """(o in q's dtype and layout, lse [B, H, N] of the sparse branch in at least float32, o_s). quant: the
    fake-quant low-bit sparse branch (the forward value of QAT); with sparse_out o_s is the sparse branch's output
    in o's dtype and layout (with quant O_s^q, which QAT's dα reads: reference_backward), as the kernels return
    it; otherwise o_s is empty."""
    b, h, n, _ = dims(q, layout)
    nq, nk = num_blocks(n, block_q), num_blocks(n, block_k)
    acc = acc_dtype(q.dtype)
    qr, kr, vr = (bhnd(t, layout).to(acc) for t in (q, k, v))
    check_dense_fits(qr, kr)
    mask = index_mask(indices, nk)
    a = block_alpha(alpha, b, h, nq, indices.shape[-1] >= nk).to(acc)
    if quant:
        o_s, lse = fake_quant_sparse_attention(qr, kr, vr, mask, block_q, block_k)
    else:
        o_s, lse = sparse_attention(qr, kr, vr, mask, block_q, block_k)
    o_l = linear_attention_complement(qr, kr, vr, mask, block_q, block_k)
    o = torch.empty_like(q)
    o.copy_(bhnd(alpha_mix(o_s, o_l, a, block_q), layout))
    o_s_out = q.new_empty(0)
    if sparse_out:
        o_s_out = torch.empty_like(q)
        o_s_out.copy_(bhnd(o_s, layout))
    return o, lse.to(acc).contiguous(), o_s_out
