"""Forms of the router's selection that the linear branch and the backward work from: the complement mask (what
the linear branch sums over) and its CSR transpose (for each key block, the query blocks that selected it)."""

from __future__ import annotations

import torch

from . import launch
from .complement import complement_kernel
from .key_block_fill import key_block_fill_kernel
from .launch import cdiv
from .layouts import NK_ALIGN
from .tuning import COMPLEMENT_COLS, KEY_TILE, LONG_LIST_FACTOR, QUERY_TILE, Z_GATHER


def complement_mask(indices: torch.Tensor, nk: int, align: int = NK_ALIGN, z: tuple | None = None):
    """bf16 [B·H, nq, nk rounded up to align]: 1 where query block I did NOT select key block j, 0 where it did
    and in the padding columns. The shape of the router's scores; what the linear branch sums over.

    z: (z_j fp32 [B·H, nk, D], Z_tot fp32 [B·H, D]) to also get Z_I = Z_tot − Σ_{j selected by I} z_j from the same
    launch; then returns (mask, Z_I fp32 [B·H, nq, D]). indices: int32 [..., nq, topk] (one launch, no cast)."""
    nq, topk = indices.shape[-2], indices.shape[-1]
    bh = indices.numel() // (nq * topk)
    idx = indices.reshape(bh, nq, topk)
    if idx.dtype != torch.int32 or not idx.is_contiguous():
        idx = idx.to(torch.int32).contiguous()
    dev = indices.device
    keep = launch.empty(bh, nq, cdiv(nk, align) * align, device=dev, dtype=torch.bfloat16)
    zblk, ztot = z if z is not None else (keep, keep)  # never read without z
    d = zblk.shape[-1] if z is not None else 16
    z_i = launch.empty(bh, nq, d, device=dev, dtype=torch.float32) if z is not None else keep
    launch.run("complement", complement_kernel, (nq, bh), idx, keep, zblk, ztot, z_i, nq, nk, keep.shape[-1], topk,
               D=d, KC=Z_GATHER, CT=COMPLEMENT_COLS, WITH_Z=z is not None, num_warps=4)
    return keep if z is None else (keep, z_i)


def key_block_lists(indices: torch.Tensor, nk: int, keep: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR transpose of the [B, H, nq, topk] selection: for each (batch·head, key block) the query blocks that
    selected it.

    Returns (ptr int32 [B·H·nk + 1], qblk int32 [B·H·nq·topk], order int32 [B·H·nk]): the query blocks of key
    block j of head bh are qblk[ptr[bh·nk + j] : ptr[bh·nk + j + 1]], ascending; order is the dk/dv launch order
    of the flat ids bh·nk + j (launch_order). keep: the selection's complement mask (complement_mask), when the
    caller has it already. Built from it (key_block_fill.py: zeros per column, a prefix sum, ranks by cumulative
    sums) on the indices' device: no host synchronisation (CUDA-graph safe), nothing larger than the router's
    scores (no N×nk tensor).
    """
    b, h, nq, topk = indices.shape
    bh = b * h
    dev = indices.device
    if keep is None:
        keep = complement_mask(indices, nk, NK_ALIGN)
    counts = (keep[:, :, :nk] == 0).sum(dim=1, dtype=torch.int64)  # [bh, nk], as launch_order's sort keys
    ptr = torch.zeros(bh * nk + 1, device=dev, dtype=torch.int32)
    torch.cumsum(counts.view(-1), dim=0, dtype=torch.int32, out=ptr[1:])
    qblk = launch.empty(bh * nq * topk, device=dev, dtype=torch.int32)
    key_block_fill_kernel[(cdiv(nk, KEY_TILE), bh)](keep, ptr, qblk, nq, nk, keep.shape[-1], JT=KEY_TILE,
                                                           IT=QUERY_TILE, num_warps=4)
    return ptr, qblk, launch_order(counts, nq * topk / nk, LONG_LIST_FACTOR)


def launch_order(counts: torch.Tensor, mean: float, factor: float) -> torch.Tensor:
    """int32 [B·H·nk]: the flat ids bh·nk + j of the key blocks, in the order the dk/dv kernel takes them. Lists of
    at least factor × mean query blocks first, longest first across all heads; then head by head (heads adjacent:
    their Q and dO stay in L2), longest first within a head. counts: [B·H, nk] list lengths (int64 saves a cast);
    one sort of integer keys, on the device (no host synchronisation)."""
    bh, nk = counts.shape
    # Descending int64 keys, rank << 32 | length: long lists rank above every head (rank bh + 1); the others by
    # head, head 0 highest (rank bh … 1).
    c = counts.long()
    head_rank = torch.arange(bh, 0, -1, device=counts.device, dtype=torch.int64).unsqueeze(1)
    key = torch.where(c >= factor * mean, bh + 1, head_rank).bitwise_left_shift_(32).add_(c)
    return torch.sort(key.view(-1), descending=True, stable=True).indices.to(torch.int32)
