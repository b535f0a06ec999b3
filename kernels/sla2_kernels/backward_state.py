"""The linear branch's state as the backward needs it: H_I summed in fp32 (docs/method.md, Backward).

The forward rounds H_I = Σ_{j not selected by I} h_j to bf16, which is plenty for O_l. The backward's linear dQ is
built from H_I minus its rank-one part Z_I v̄ᵀ (every O_l of a block is close to one v̄), a part ~1/√N as large as
H_I: a bf16 H_I loses 7% of dQ's linear part at Wan-1.3B's N = 32760 (a float64 simulation on random inputs), and
at α → 0 that is all of dQ. So the backward rebuilds H_I from K and V with fp32 sums (one precompute pass and one
product, bf16 operands, fp32 output), and the kernel centres it before rounding (bwd_math.centred_state).
Rebuilding it also means that the forward keeps no state for the backward.
"""

from __future__ import annotations

import torch

from .kv_state import precompute
from .launch import cdiv
from .selection import complement_mask


def _product_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for bf16 a, b with fp32 accumulation and an fp32 result: the tensor cores' bf16 product on CUDA;
    elsewhere (or where torch has no out_dtype for it) the operands widened to fp32, which TF32 would not round
    (bf16 values fit its mantissa): the same numbers up to summation order."""
    if a.is_cuda:
        try:
            return torch.bmm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            pass
    return torch.bmm(a.float(), b.float())


def backward_linear_state(k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, *, block_q: int, block_k: int,
                          layout: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(H_I fp32 [B·H, nq, D, D], Z_I fp32 [B·H, nq, D], the complement mask it was summed with) for this selection
    (indices [B, H, nq, topk]); the dk/dv step builds its key-block lists from the same mask."""
    state = precompute(k, v, block_k=block_k, layout=layout)
    b, h, n, d = state.shape
    bh, nq, nk = b * h, cdiv(n, block_q), cdiv(n, block_k)
    idx = indices.reshape(bh, nq, indices.shape[-1]).to(torch.int32).contiguous()
    # the mask's padding columns meet h's zero padding blocks; Z_I comes from the same launch
    keep, z_i = complement_mask(idx, nk, z=(state.zblk, state.ztot))
    h_i = _product_fp32(keep, state.hblk.view(bh, keep.shape[-1], d * d)).view(bh, nq, d, d)
    return h_i, z_i, keep
