"""Fused SLA2 forward with the low-bit sparse branch, every tile moved by TMA (the layout of sla2_fwd_tma.py).

The arithmetic of sla2_fwd_lowbit.py (its docstring: INT8 QKᵀ with smoothed K, P̃ against the running row
maximum, FP8 e4m3 PV, lse put back on the original scale), with three differences that let a 4-warp program
run without spilling, so that two programs share an SM and one's softmax overlaps the other's products as in
the bf16 TMA kernel:
* Q̂ and s_q come from query_pass.query_pass_kernel and arrive by TMA: the INT8 product reads Q̂ from shared
  memory instead of a register copy held through the loop. The same pass leaves the lse's smoothing shift in
  LSE and (FwdConfig.linear_pass) the linear branch's O_l in o.
* The FP8 product accumulates into the running accumulator (one level): a separate fp32 tile per product, as
  the pointer kernel keeps for two-level accumulation, is 128 more registers a thread at 4 warps. The tensor
  cores then carry the running sum at their FP8 accumulation precision.
* O_s is formed in place (acc scaled by s_v and 1/l) before the linear mix, so storing it for QAT needs no
  second tile.
sm_90a compile (Triton 3.9 on a CPU, registers and spills from ptxas; not timed): at 4 warps and 2 stages with
the linear branch, 255 registers a thread, no spills (68 bytes with O_s stored for QAT), 48 KB of shared
memory; the pointer low-bit kernel takes 255 registers at 8 warps (one program an SM) and spills 3 KB at 4.
A program may take part of a query block (BM rows, FwdConfig.rows; it shares the block's selection, s_q and
linear state): the default, two 64-row programs under a 128-register cap, compiles with no spills on the GPU's
Triton 3.6 (41 KB of shared memory at 2 stages), so that four programs share an SM.
"""

import triton
import triton.language as tl

from .quant_math import LN2, LOG2_FP8_E4M3_MAX, LOG2E
from .sla2_fwd_lowbit import raw_scores, running_max_step
from .sla2_fwd_tma import mix_linear_pass, tma_linear_mix


@triton.jit
def sla2_fwd_lowbit_tma_kernel(
    q_desc, o_desc, os_desc,  # [B, H, N, D] views; blocks [1, 1, BM, D]; os_desc: O_s (o's strides), o_desc if unused
    qc_desc, h_desc,  # as sla2_fwd_tma_kernel's: Q's column pieces and H_I bf16 [BH·nq, D, D]
    q8_desc, k8_desc, v8t_desc,  # Q̂ int8 [BH, nq·BQ, D], K̂ int8 [BH, nk·BK, D], V̂ᵀ e4m3 [BH, D, nk·BK]; blocks
    # [1, BM, D], [1, BK, D], [1, D, BK]
    IDX, ALPHA, LSE, ZI, SQ, SK, SV,  # SQ fp32 [BH, nq]; SK [BH, nk]; SV [BH, D]; LSE holds the lse shift on entry
    sab, sah, saq,
    N, H, NQ, NK, TOPK, sm_scale,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, LINEAR: tl.constexpr, EPI_CHUNKS: tl.constexpr,
    INTERPRET: tl.constexpr, STORE_OS: tl.constexpr, BM: tl.constexpr,  # BM: query rows of this program, dividing BQ
    LINEAR_PASS: tl.constexpr,  # O_l was written into o by query_pass_kernel (FwdConfig.linear_pass)
):
    pid_m = tl.program_id(0) // (BQ // BM)  # the query block: its selection, s_q and linear state
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    bh64 = bh.to(tl.int64)
    row0 = pid_m * BQ + (tl.program_id(0) % (BQ // BM)) * BM
    offs_d = tl.arange(0, D)

    q8 = q8_desc.load([bh, row0, 0]).reshape(BM, D)
    qk_scale = tl.load(SQ + bh64 * NQ + pid_m) * sm_scale * LOG2E
    idx_base = IDX + (bh64 * NQ + pid_m) * TOPK
    sk_base = SK + bh64 * NK
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, D], dtype=tl.float32)
    for it in range(0, TOPK):
        blk = tl.load(idx_base + it)
        start = blk * BK
        k8 = k8_desc.load([bh, start, 0]).reshape(BK, D)  # K̂ and V̂ᵀ are padded to nk·BK keys (zeros)
        s = raw_scores(q8, k8, start, N, BK)
        m_i, l_i, corr, p8 = running_max_step(s, qk_scale * tl.load(sk_base + blk), m_i, l_i, INTERPRET)
        v8t = v8t_desc.load([bh, 0, start]).reshape(D, BK)
        acc = tl.dot(p8, tl.trans(v8t), acc * corr[:, None])

    s_v = tl.load(SV + bh64 * D + offs_d)
    acc = acc * s_v[None, :] * (1.0 / l_i)[:, None]  # O_s, in place (l carries P̃'s 448)
    if STORE_OS:
        os_desc.store([b, h, row0, 0], acc.to(os_desc.dtype).reshape(1, 1, BM, D))
    if LINEAR:
        alpha = tl.load(ALPHA + b.to(tl.int64) * sab + h.to(tl.int64) * sah + pid_m * saq)
        if alpha != 1.0:
            ones = tl.full([BM], 1.0, tl.float32)
            if LINEAR_PASS:
                acc = mix_linear_pass(acc, ones, alpha, o_desc, b, h, row0, BM, D)
            else:
                acc = tma_linear_mix(acc, ones, alpha, q_desc, qc_desc, h_desc, ZI, b, h, row0, bh * NQ + pid_m, BM,
                                     D, EPI_CHUNKS, INTERPRET)
    o_desc.store([b, h, row0, 0], acc.to(o_desc.dtype).reshape(1, 1, BM, D))
    # lse on the scale of the original Q, K: smoothing removed q·μ/√D from every score; query_pass_kernel left that
    # shift in LSE
    offs_m = row0 + tl.arange(0, BM)
    lse = LSE + bh64 * N + offs_m
    tl.store(lse, (m_i + tl.log2(l_i) - LOG2_FP8_E4M3_MAX) * LN2 + tl.load(lse, mask=offs_m < N), mask=offs_m < N)
