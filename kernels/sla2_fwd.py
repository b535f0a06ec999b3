"""Fused SLA2 forward, bf16/fp16: sparse softmax over the selected key blocks + complement linear + α-mix.

One program per (query block i, batch·head); programs of one head are adjacent in the launch order, so
that head's K, V and φK (≈ 25 MB at N = 32760, D = 128) stay in L2 while its query blocks gather them.
Each loop takes KPI selected key blocks per iteration (KPI·b_k gathered rows).

Two phases over the same list of selected blocks (SLA2.md §4):
  1. linear:  H_sel = Σ_sel φK_jᵀ V_j (one MMA per block on tiles from L2), Z_sel = Σ_sel z_j;
              then H_i = H_tot − H_sel is kept in registers as bf16 (32 registers a thread at 8 warps)
              and Z_i = Z_tot − Z_sel in fp32.
  2. sparse:  online softmax (exp2 domain), acc += P V_sel.
  Epilogue:   O_s = acc / l;  O_l = φQ H_i / (φQ · Z_i);  O = α O_s + (1 − α) O_l;  lse = m + log l.
Why two phases rather than one loop: one loop keeps two fp32 128×128 accumulators (acc and H_sel) live at
once; at 8 warps that is 128 of the 255 registers a thread may have and the kernel spilled (measured on
the H100, 2026-11-27: 255 registers, 28–146 spilled, linear part +75% over the sparse part alone).
The price is loading V twice from L2.
With every key block selected (topk = nk) the linear branch is compiled out and α is 1, as in the
reference (effective_alpha): nothing is left for the linear branch.
"""

import triton
import triton.language as tl

from .dot import mma, mma_acc
from .quant_math import LN2, LOG2E


@triton.jit
def linear_complement_sums(
    v_base, svn, svd, PHIK, ZBLK, HTOT, ZTOT, idx_base, bh64, N, NK, TOPK,
    BK: tl.constexpr, D: tl.constexpr, KPI: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Phase 1: (H_i bf16 [D, D], Z_i fp32 [D]) = totals minus the sums over this query block's selection."""
    BN: tl.constexpr = KPI * BK
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    offs_slot = tl.arange(0, KPI)
    slot = offs_n // BK
    within = offs_n % BK
    phik_base = PHIK + bh64 * NK * BK * D
    h_sel = tl.zeros([D, D], dtype=tl.float32)
    z_sel = tl.zeros([D], dtype=tl.float32)
    for it in range(0, tl.cdiv(TOPK, KPI)):
        sel = it * KPI + slot
        sel_ok = sel < TOPK
        blk = tl.load(idx_base + sel, mask=sel_ok, other=0)
        rows = blk * BK + within
        # φK rows of padded tokens are stored as 0: only an empty slot needs a mask there.
        fk = tl.load(phik_base + rows[:, None] * D + offs_d[None, :], mask=sel_ok[:, None], other=0.0)
        v = tl.load(v_base + rows[:, None] * svn + offs_d[None, :] * svd, mask=(sel_ok & (rows < N))[:, None],
                    other=0.0)
        h_sel = mma_acc(tl.trans(fk), v, h_sel, INTERPRET)
        sel2 = it * KPI + offs_slot
        blk2 = tl.load(idx_base + sel2, mask=sel2 < TOPK, other=0)
        zt = tl.load(ZBLK + (bh64 * NK + blk2[:, None]) * D + offs_d[None, :], mask=(sel2 < TOPK)[:, None], other=0.0)
        z_sel += tl.sum(zt, axis=0)
    h_i = tl.load(HTOT + bh64 * D * D + offs_d[:, None] * D + offs_d[None, :]) - h_sel
    z_i = tl.load(ZTOT + bh64 * D + offs_d) - z_sel
    return h_i.to(tl.bfloat16), z_i


@triton.jit
def linear_output(q, h_i, z_i, INTERPRET: tl.constexpr):
    """O_l = φQ H_i / (φQ · Z_i), φ = softmax over head_dim. The D×D product runs on the tensor cores in
    bf16 (fp32 accumulate); the denominator uses the same bf16-rounded φQ in fp32, so a V with a constant
    column gives exactly that constant."""
    qf = q.to(tl.float32)
    e = tl.exp(qf - tl.max(qf, axis=1)[:, None])
    fq = (e / tl.sum(e, axis=1)[:, None]).to(tl.bfloat16)
    num = mma(fq, h_i, INTERPRET)
    den = tl.sum(fq.to(tl.float32) * z_i[None, :], axis=1)
    return num / den[:, None]


@triton.jit
def sla2_fwd_kernel(
    Q, K, V, IDX, ALPHA, O, LSE,
    PHIK, ZBLK, HTOT, ZTOT,  # from kv_precompute_kernel (+ totals)
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sob, soh, son, sod,
    sab, sah, saq,
    N, H, NQ, NK, TOPK, sm_scale,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, KPI: tl.constexpr, LINEAR: tl.constexpr,
    INTERPRET: tl.constexpr, KPI_LIN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    bh64 = bh.to(tl.int64)
    BN: tl.constexpr = KPI * BK

    offs_m = pid_m * BQ + tl.arange(0, BQ)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BN)
    slot = offs_n // BK  # which of the KPI blocks of this iteration a gathered row belongs to
    within = offs_n % BK
    q_ok = offs_m < N
    q = tl.load(Q + b64 * sqb + h64 * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
                mask=q_ok[:, None], other=0.0)
    k_base = K + b64 * skb + h64 * skh
    v_base = V + b64 * svb + h64 * svh
    idx_base = IDX + (bh64 * NQ + pid_m) * TOPK

    if LINEAR:
        h_i, z_i = linear_complement_sums(v_base, svn, svd, PHIK, ZBLK, HTOT, ZTOT, idx_base, bh64, N, NK, TOPK,
                                          BK, D, KPI_LIN, INTERPRET)

    qk_scale = sm_scale * LOG2E
    m_i = tl.full([BQ], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BQ], dtype=tl.float32)
    acc = tl.zeros([BQ, D], dtype=tl.float32)
    for it in range(0, tl.cdiv(TOPK, KPI)):
        sel = it * KPI + slot
        sel_ok = sel < TOPK  # an odd topk leaves the last iteration's second slot empty
        blk = tl.load(idx_base + sel, mask=sel_ok, other=0)
        rows = blk * BK + within
        kv_ok = sel_ok & (rows < N)  # ragged last key block
        k = tl.load(k_base + rows[:, None] * skn + offs_d[None, :] * skd, mask=kv_ok[:, None], other=0.0)
        v = tl.load(v_base + rows[:, None] * svn + offs_d[None, :] * svd, mask=kv_ok[:, None], other=0.0)
        s = mma(q, tl.trans(k), INTERPRET) * qk_scale
        s = tl.where(kv_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        corr = tl.exp2(m_i - m_new)
        l_i = l_i * corr + tl.sum(p, axis=1)
        acc = mma_acc(p.to(v.dtype), v, acc * corr[:, None], INTERPRET)
        m_i = m_new

    o = acc / l_i[:, None]
    if LINEAR:
        alpha = tl.load(ALPHA + b64 * sab + h64 * sah + pid_m * saq)
        # Q again (from L2): keeping the tile in registers through the loop would cost 32 registers a thread.
        q = tl.load(Q + b64 * sqb + h64 * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
                    mask=q_ok[:, None], other=0.0)
        o = alpha * o + (1.0 - alpha) * linear_output(q, h_i, z_i, INTERPRET)
    tl.store(O + b64 * sob + h64 * soh + offs_m[:, None] * son + offs_d[None, :] * sod,
             o.to(O.dtype.element_ty), mask=q_ok[:, None])
    tl.store(LSE + (bh64 * N) + offs_m, (m_i + tl.log2(l_i)) * LN2, mask=q_ok)
