"""One pass over Q per query block before the TMA forward kernels: what the main kernel needs from Q besides its
sparse loop (docs/method.md, Linear branch; Low-bit sparse branch and QAT).

For query block I (b_q rows, ragged last block masked):
  (QUANT)  Q̂_I = INT8(Q_I / s_q), s_q = max|Q_I|/127, padded rows 0            -> Q8 [BH, nq·b_q, D], SQ [BH, nq]
  (QUANT)  the lse shift q·μ_K/√D per row (smoothing took it from every score) -> LSE [BH, N], completed there
  (LINEAR) O_l = φQ_I H_I / (φQ_I · Z_I) (sla2_fwd.linear_output, the pointer kernels' epilogue), written into the
           output o, which the main kernel then reads back and mixes: O = α·O_s + (1 − α)·O_l (stored in o's
           dtype, as the reference's O_l is before the mix's sum)
The low-bit kernel takes Q̂ from here so that its tensor cores read Q̂ from shared memory (quantised inside it, Q̂
sat in registers through the loop and a 4-warp program spilled); the pointer low-bit kernel's prologue quantises
by the same int8_block, so both multiply the same Q̂.
LINEAR (FwdConfig.linear_pass): in the main kernel's epilogue, φQ·H_I reads Q and H_I again in every program's
tail, after its loop, with nothing to hide the loads: at Wan-1.3B, 97%, that epilogue cost about 0.10 ms against
0.05 for its bytes (H100, 2026-12-06; docs/results.md). Here Q and H_I stream once, but the pass with the linear
branch takes 0.139 ms and the main kernel then reads O_l back: slower than the epilogue (H100, 2026-12-07), which
stays the default; bench.py times both.
Registers a thread at each warp count: tuning.QUERY_PASS_WARPS.
"""

import triton
import triton.language as tl

from .quant_math import int8_block
from .sla2_fwd import linear_output


@triton.jit
def query_pass_kernel(
    q_desc, o_desc,  # [B, H, N, D] views (either layout), blocks [1, 1, BQ, D]; o_desc receives O_l (LINEAR)
    h_desc, ZI,  # H_I bf16 [BH·nq, D, D], blocks [1, D, D]; Z_I fp32 [BH, nq, D] (forward.linear_state)
    q8_desc, SQ, LSE, KMEAN,  # QUANT: Q̂ int8 [BH, nq·BQ, D], blocks [1, BQ, D]; s_q fp32 [BH, nq]; lse fp32 [BH, N];
    # μ_K fp32 [BH, D]
    N, H, NQ, sm_scale,
    BQ: tl.constexpr, D: tl.constexpr, LINEAR: tl.constexpr, QUANT: tl.constexpr, INTERPRET: tl.constexpr,
):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    bh64 = bh.to(tl.int64)
    offs_d = tl.arange(0, D)
    q = q_desc.load([b, h, i * BQ, 0]).reshape(BQ, D)  # rows past N arrive as zeros
    if QUANT:
        # The shift before the quantiser: after it, its fp32 copy of Q stays live through int8_block and the pass
        # takes 150 registers a thread at 8 warps (one program an SM) where this order takes 80 (three).
        qf = q.to(tl.float32)
        shift = tl.sum(qf * tl.load(KMEAN + bh64 * D + offs_d)[None, :], axis=1) * sm_scale
        rows = i * BQ + tl.arange(0, BQ)
        tl.store(LSE + bh64 * N + rows, shift, mask=rows < N)
        q8, s_q = int8_block(qf)
        q8_desc.store([bh, i * BQ, 0], q8.reshape(1, BQ, D))
        tl.store(SQ + bh64 * NQ + i, s_q)
    if LINEAR:
        blk = bh * NQ + i
        h_i = h_desc.load([blk, 0, 0]).reshape(D, D)
        o_l = linear_output(q, h_i, tl.load(ZI + blk.to(tl.int64) * D + offs_d), INTERPRET)
        o_desc.store([b, h, i * BQ, 0], o_l.to(o_desc.dtype).reshape(1, 1, BQ, D))  # clipped at N
