"""Forms of the router's selection that the linear branch and the backward work from: the complement mask (what
the linear branch sums over) and its CSR transpose (for each key block, the query blocks that selected it)."""

from __future__ import annotations

import torch
import triton

from . import launch
from .key_block_fill import key_block_fill_kernel
from .layouts import NK_ALIGN
from .tuning import KEY_TILE, QUERY_TILE


def complement_mask(indices: torch.Tensor, nk: int, align: int = NK_ALIGN) -> torch.Tensor:
    """bf16 [B·H, nq, nk rounded up to align]: 1 where query block I did NOT select key block j, 0 where it did
    and in the padding columns. The shape of the router's scores; what the linear branch sums over."""
    bh, nq, topk = indices.numel() // (indices.shape[-2] * indices.shape[-1]), indices.shape[-2], indices.shape[-1]
    keep = torch.ones(bh, nq, triton.cdiv(nk, align) * align, device=indices.device, dtype=torch.bfloat16)
    keep[:, :, nk:] = 0.0
    return keep.scatter_(2, indices.reshape(bh, nq, topk).long(), 0.0)


def key_block_lists(indices: torch.Tensor, nk: int, keep: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR transpose of the [B, H, nq, topk] selection: for each (batch·head, key block) the query blocks that
    selected it.

    Returns (ptr int32 [B·H·nk + 1], qblk int32 [B·H·nq·topk], order int32 [B·H, nk]): the query blocks of key
    block j of head bh are qblk[ptr[bh·nk + j] : ptr[bh·nk + j + 1]], ascending; order lists each head's key
    blocks by decreasing list length (the dk/dv launch order). keep: the selection's complement mask
    (complement_mask), when the caller has it already. Built from it (key_block_fill.py: zeros per column, a
    prefix sum, ranks by cumulative sums) on the indices' device: no host synchronisation (CUDA-graph safe),
    nothing larger than the router's scores (no N×nk tensor).
    """
    b, h, nq, topk = indices.shape
    bh = b * h
    dev = indices.device
    if keep is None:
        keep = complement_mask(indices, nk, NK_ALIGN)
    counts = (keep[:, :, :nk] == 0).sum(dim=1, dtype=torch.int32)  # [bh, nk]
    ptr = torch.zeros(bh * nk + 1, device=dev, dtype=torch.int32)
    torch.cumsum(counts.view(-1), dim=0, dtype=torch.int32, out=ptr[1:])
    qblk = launch.empty(bh * nq * topk, device=dev, dtype=torch.int32)
    key_block_fill_kernel[(triton.cdiv(nk, KEY_TILE), bh)](keep, ptr, qblk, nq, nk, keep.shape[-1], JT=KEY_TILE,
                                                           IT=QUERY_TILE, num_warps=4)
    order = torch.sort(counts, dim=1, descending=True, stable=True).indices.to(torch.int32)
    return ptr, qblk, order
