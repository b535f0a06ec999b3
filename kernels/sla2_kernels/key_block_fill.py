"""CSR transpose of the selection for the dk/dv kernel: for each (batch·head, key block j) the query blocks
that selected j, ascending.

From the complement mask the backward already builds for the dh product (selection.complement_mask: bf16 [B·H, nq,
nk padded], 0 where query block i selected key block j): the lists' lengths are the zeros per column, their
offsets a prefix sum of those, and query block i's place in list j is the number of query blocks before it that
also selected j: a cumulative sum down column j. One program takes KEY_TILE key blocks of one head and walks the
query blocks QUERY_TILE at a time, so the work is O(nq·nk) per head with no sort, and the lists come out
ascending (deterministic order of the dK/dV sums).
Measured on the H100 (2026-11-27, do_bench, eager, with its own int8 map then): 0.40 ms at
Wan-1.3B and 0.42 at Wan-14B against 0.63 and 0.62 for the torch.sort + searchsorted construction it replaced
(identical lists); both mostly host time for a handful of small launches, which a CUDA graph removes. A first
kernel comparing every index-list entry with every key block (O(nq·topk·nk)) took 2.05 ms at 14B.
"""

import triton
import triton.language as tl

@triton.jit
def key_block_fill_kernel(KEEP, PTR, QBLK, NQ, NK, NK_PAD, JT: tl.constexpr, IT: tl.constexpr):
    """QBLK[PTR[bh·NK + j] + r] = the r-th query block (ascending) with KEEP[bh, i, j] = 0, j < NK.
    KEEP bf16 [BH, NQ, NK_PAD] (the complement mask)."""
    bh = tl.program_id(1).to(tl.int64)
    offs_j = tl.program_id(0) * JT + tl.arange(0, JT)
    j_ok = offs_j < NK
    pos = tl.load(PTR + bh * NK + offs_j, mask=j_ok, other=0)
    for i0 in range(0, NQ, IT):
        offs_i = i0 + tl.arange(0, IT)
        ok = (offs_i < NQ)[:, None] & j_ok[None, :]
        keep = tl.load(KEEP + (bh * NQ + offs_i[:, None]) * NK_PAD + offs_j[None, :], mask=ok, other=1.0)
        hit = (keep == 0.0).to(tl.int32)
        rank = tl.cumsum(hit, axis=0)  # inclusive, down the query blocks
        qblk = offs_i[:, None] + tl.zeros([IT, JT], dtype=tl.int32)
        tl.store(QBLK + pos[None, :] + rank - 1, qblk, mask=hit != 0)
        pos += tl.sum(hit, axis=0)
