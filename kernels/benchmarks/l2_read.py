"""A ceiling for the sparse loops: how fast the SMs pull tiles out of L2 by TMA.

Each step of the forward's sparse loop brings one selected key block from L2 (K and V of a head fit there while
its query blocks run): 32 KB in bf16 for a 128-row program, 16 KB of K̂ and V̂ᵀ in 8 bit for each of a query
block's two 64-row programs, the same bytes per query block either way. This kernel does only that: each program
sums `iters` [64, 128] bf16 tiles (16 KB) of a buffer small enough to stay in L2, picked by a multiplicative hash
of (program, step) as a selection scatters its blocks, pipelined as the loops are. bench.py reports its rate
beside the copy and matmul ceilings.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

TILE_ROWS, TILE_COLS = 64, 128  # one 16 KB bf16 tile, a key block of K or V
HASH = tl.constexpr(40503)  # odd: (program, step) -> tile spreads over every tile


@triton.jit
def l2_read_kernel(desc, OUT, TILES, ITERS, BM: tl.constexpr, D: tl.constexpr, STAGES: tl.constexpr):
    """desc: [TILES·BM, D] bf16, blocks [BM, D]; OUT fp32 [programs], each the sum of the tiles it read."""
    pid = tl.program_id(0)
    acc = tl.zeros([BM, D], dtype=tl.float32)
    for i in tl.range(0, ITERS, num_stages=STAGES):  # loads in flight as the loops keep them
        t = ((pid * ITERS + i) % TILES) * HASH % TILES  # reduced first: the product stays within int32
        acc += desc.load([t * BM, 0]).to(tl.float32)
    tl.store(OUT + pid, tl.sum(acc))


def tile_order(programs: int, iters: int, tiles: int) -> list[list[int]]:
    """The tiles each program reads, in order (the kernel's hash, on the host)."""
    return [[((p * iters + i) % tiles) * HASH.value % tiles for i in range(iters)] for p in range(programs)]


def l2_read(buf, programs: int, iters: int, num_warps: int = 4, num_stages: int = 3):
    """Launch over buf [tiles·64, 128] bf16 (contiguous): fp32 [programs] sums; bytes read = programs·iters·16 KB."""
    tiles = buf.shape[0] // TILE_ROWS
    out = torch.empty(programs, device=buf.device, dtype=torch.float32)
    desc = TensorDescriptor(buf, list(buf.shape), list(buf.stride()), [TILE_ROWS, TILE_COLS])
    l2_read_kernel[(programs,)](desc, out, tiles, iters, BM=TILE_ROWS, D=TILE_COLS, STAGES=num_stages,
                                num_warps=num_warps)
    return out


def l2_read_gbps(time_ms, sms: int, megabytes: int = 16, iters: int = 256, per_sm: int = 4) -> float:
    """GB/s read from an L2-resident buffer of `megabytes` MB by per_sm programs an SM, each reading iters tiles.
    time_ms(fn) -> median ms (bench.py's). 16 MB: a third of the H100's L2 (50 MB), about what K and V of one
    Wan-1.3B head take in bf16."""
    rows = megabytes * (1 << 20) // (TILE_COLS * 2)
    buf = torch.randn(rows, TILE_COLS, device="cuda", dtype=torch.bfloat16)
    programs = sms * per_sm
    t = time_ms(lambda: l2_read(buf, programs, iters))
    return programs * iters * TILE_ROWS * TILE_COLS * 2 / t / 1e6
