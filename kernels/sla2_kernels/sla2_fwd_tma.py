"""Fused SLA2 forward, bf16/fp16, with every tile moved by the tensor-memory accelerator (TMA descriptors).

Same algorithm and program layout as sla2_fwd.py (one program per query block and batch·head, one selected
key block per iteration, linear branch from forward.linear_state's H_I, Z_I in the epilogue). What differs:

* Q, K, V and H_I arrive in shared memory by TMA and feed the tensor cores from there: Q no longer occupies
  registers through the loop, and the pointer arithmetic of the gathered tiles is gone. A 4-warp program
  then fits in 255 registers with no spills, two programs run per SM (98 KB of shared memory each at two
  stages), and one program's softmax overlaps the other's MMAs. H100, Wan-1.3B at 97%: sparse loop 0.43 ms
  against 0.58 for the pointer kernel at its best configuration (2026-11-27).
* Out-of-bounds rows of a ragged last block come back as zeros from the TMA unit (the pointer kernel's
  masked loads), and the output store is clipped at N by it.
* The linear branch is accumulated into the sparse accumulator instead of a second [BQ, D] tensor
  (tma_linear_mix). α = 1 (no linear share) takes the plain path.

The tensors must suit TMA (16-byte aligned base, unit stride in head_dim, other strides multiples of 16
bytes); forward.sla2_forward falls back to the pointer kernel otherwise.
"""

import triton
import triton.language as tl

from .dot import mma_acc
from .quant_math import LN2, LOG2E
from .sla2_fwd import softmax_step

@triton.jit
def tma_linear_mix(acc, row_scale, alpha, q_desc, qc_desc, h_desc, ZI, b, h, row0, blk,
                   BM: tl.constexpr, D: tl.constexpr, EPI_CHUNKS: tl.constexpr, INTERPRET: tl.constexpr):
    """O = α·O_s + (1 − α)·O_l for the TMA kernel's epilogue (α < 1), O_s = acc·row_scale[:, None]. With
    φQ ∝ e = exp(Q − rowmax) the softmax's normaliser cancels in O_l = φQ H_I / φQ·Z_I, so
        O = (1 − α)/den · (α·den/(1 − α)·O_s + e H_I),  den = e·Z_I,
    e H_I accumulating into the rescaled acc: no second [BM, D] accumulator (128 registers a thread at 4 warps).
    Q comes again by TMA (q_desc): the loop's tile lives in shared memory only, and a register copy of it kept
    through the loop would spill. The whole tile gives the row max and den; e H_I then takes EPI_CHUNKS pieces
    of head_dim (qc_desc, h_desc: Q's columns and H_I's rows, from L2), so only a piece of e sits next to acc."""
    offs_d = tl.arange(0, D)
    z_i = tl.load(ZI + blk.to(tl.int64) * D + offs_d)
    qe = q_desc.load([b, h, row0, 0]).reshape(BM, D)
    mx = tl.max(qe, axis=1).to(tl.float32)
    den = tl.sum(tl.exp2((qe.to(tl.float32) - mx[:, None]) * LOG2E).to(tl.bfloat16).to(tl.float32)
                 * z_i[None, :], axis=1)
    acc = acc * (alpha * den / (1.0 - alpha) * row_scale)[:, None]
    for c in tl.static_range(EPI_CHUNKS):
        qc = qc_desc.load([b, h, row0, c * (D // EPI_CHUNKS)]).reshape(BM, D // EPI_CHUNKS)
        ec = tl.exp2((qc.to(tl.float32) - mx[:, None]) * LOG2E).to(tl.bfloat16)
        hc = h_desc.load([blk, c * (D // EPI_CHUNKS), 0]).reshape(D // EPI_CHUNKS, D)
        acc = mma_acc(ec, hc, acc, INTERPRET)
    return acc * ((1.0 - alpha) / den)[:, None]


@triton.jit
def mix_linear_pass(acc, row_scale, alpha, o_desc, b, h, row0, BM: tl.constexpr, D: tl.constexpr):
    """O = α·O_s + (1 − α)·O_l, O_s = acc·row_scale[:, None], with O_l read back from the output tile, where
    query_pass_kernel wrote it."""
    o_l = o_desc.load([b, h, row0, 0]).reshape(BM, D).to(tl.float32)
    return acc * (alpha * row_scale)[:, None] + (1.0 - alpha) * o_l


@triton.jit
def sla2_fwd_tma_kernel(
    q_desc, k_desc, v_desc, o_desc, os_desc,  # [B, H, N, D] views (either layout); blocks [1, 1, BM or BK, D];
    # os_desc: O_s (o's strides, stored with STORE_OS), o_desc if unused
    qc_desc, h_desc,  # Q again, blocks [1, 1, BM, D/EPI_CHUNKS]; H_I bf16 [BH·nq, D, D] (forward.linear_state), blocks
    # [1, D/EPI_CHUNKS, D]
    IDX, ALPHA, LSE, ZI,  # IDX int32 [BH, nq, topk]; ALPHA fp32 [B, H, nq] view; LSE fp32 [BH, N]; ZI fp32 [BH, nq, D]
    sab, sah, saq,
    N, H, NQ, TOPK, sm_scale,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, LINEAR: tl.constexpr, EPI_CHUNKS: tl.constexpr,
    INTERPRET: tl.constexpr, BM: tl.constexpr,  # BM: query rows of this program (FwdConfig.rows), dividing BQ
    LINEAR_PASS: tl.constexpr,  # O_l was written into o by query_pass_kernel (FwdConfig.linear_pass)
    STORE_OS: tl.constexpr,
):
    pid_m = tl.program_id(0) // (BQ // BM)  # the query block, whose selection and linear state the rows share
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    bh64 = bh.to(tl.int64)
    row0 = pid_m * BQ + (tl.program_id(0) % (BQ // BM)) * BM

    q = q_desc.load([b, h, row0, 0]).reshape(BM, D)
    idx_base = IDX + (bh64 * NQ + pid_m) * TOPK
    qk_scale = sm_scale * LOG2E
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, D], dtype=tl.float32)
    for it in range(0, TOPK):
        start = tl.load(idx_base + it) * BK
        k = k_desc.load([b, h, start, 0]).reshape(BK, D)
        v = v_desc.load([b, h, start, 0]).reshape(BK, D)
        m_i, l_i, acc = softmax_step(q, k, v, start, N, m_i, l_i, acc, qk_scale, BK, INTERPRET)

    if STORE_OS:
        os_desc.store([b, h, row0, 0], (acc / l_i[:, None]).to(os_desc.dtype).reshape(1, 1, BM, D))
    if LINEAR:
        alpha = tl.load(ALPHA + b.to(tl.int64) * sab + h.to(tl.int64) * sah + pid_m * saq)
        if alpha == 1.0:
            o = acc / l_i[:, None]
        elif LINEAR_PASS:
            o = mix_linear_pass(acc, 1.0 / l_i, alpha, o_desc, b, h, row0, BM, D)
        else:
            o = tma_linear_mix(acc, 1.0 / l_i, alpha, q_desc, qc_desc, h_desc, ZI, b, h, row0, bh * NQ + pid_m, BM, D,
                               EPI_CHUNKS, INTERPRET)
    else:
        o = acc / l_i[:, None]
    o_desc.store([b, h, row0, 0], o.to(o_desc.dtype).reshape(1, 1, BM, D))
    offs_m = row0 + tl.arange(0, BM)
    tl.store(LSE + bh64 * N + offs_m, (m_i + tl.log2(l_i)) * LN2, mask=offs_m < N)
