"""Fused SLA2 forward, bf16/fp16: sparse softmax over the selected key blocks + complement linear + α-mix.

The pointer-tile kernel. The default is its TMA twin (sla2_fwd_tma.py, 0.68 vs 0.85 ms at Wan-1.3B, 97%,
H100); this one runs where a tensor does not suit TMA, and holds the loop step both share.

One program per (query block i, batch·head); programs of one head are adjacent in the launch order, so
that head's K and V (≈ 17 MB at N = 32760, D = 128) stay in L2 while its query blocks gather them.

  loop:      online softmax (exp2 domain) over the selected blocks, acc += P V_sel.
  epilogue:  O_s = acc / l;  O_l = φQ H_I / (φQ · Z_I);  O = α O_s + (1 − α) O_l;  lse = m + log l.
H_I (bf16 D×D) and Z_I come from forward.linear_state, one dense product for all query blocks at once. An
earlier version formed them here in a first loop (H_tot minus Σ_sel φK_jᵀV_j, one MMA per selected block):
that loop cost 60% on top of the sparse loop (0.43 of 1.12 ms, H100, Wan-1.3B at 97%) and held H_I in 32
registers a thread through the sparse loop (255 registers; 187 without it, sm_90 compile).
Two 64-row programs per query block under a 128-register cap (two programs an SM, so that one's softmax
overlaps the other's MMAs) measured slower on the H100 (2026-11-27: 1.13 vs 0.85 ms): not kept.
With every key block selected (topk = nk) the linear branch is compiled out and α is 1, as in the
reference (effective_alpha): nothing is left for the linear branch.
"""

import triton
import triton.language as tl

from .dot import mma, mma_acc
from .quant_math import LN2, LOG2E


@triton.jit
def load_linear_state(HI, ZI, bh64, pid_m, NQ, D: tl.constexpr):
    """(H_I bf16 [D, D], Z_I fp32 [D]) of query block pid_m, from forward.linear_state."""
    offs_d = tl.arange(0, D)
    base = bh64 * NQ + pid_m
    h_i = tl.load(HI + base * D * D + offs_d[:, None] * D + offs_d[None, :])
    return h_i, tl.load(ZI + base * D + offs_d)


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
def keys_before_n(s, start, N, BK: tl.constexpr):
    """Scores s [rows, BK] against the key block at row `start`, −inf on keys at or past N. Only a block that reaches
    past N pays for the select (a uniform branch): in every other block it would be 64 instructions a thread an
    iteration at 4 warps, in loops bound by their softmax's instructions (docs/results.md, "Against the floor")."""
    if start + BK > N:
        s = tl.where((start + tl.arange(0, BK))[None, :] < N, s, float("-inf"))
    return s


@triton.jit
def online_step(s, scale, m_i, l_i, LOG2_P_SCALE: tl.constexpr):
    """One online-softmax step (exp2 domain) on raw scores s whose log2-domain value is s·scale (scale > 0):
    (m_new, l_new, corr, p) with p = 2^LOG2_P_SCALE · exp2(s·scale − m_new) and l summing p; the caller rescales
    its accumulator by corr. The row maximum is taken on s and scaled once (rounding is monotone: the same value as
    the maximum of the scaled scores), so each score takes one fused multiply-add before its exp2, and a scale of
    p (the low-bit kernels' 448) rides in the exponent."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * scale)
    p = tl.exp2(s * scale - (m_new - LOG2_P_SCALE)[:, None])
    corr = tl.exp2(m_i - m_new)
    return m_new, l_i * corr + tl.sum(p, axis=1), corr, p


@triton.jit
def softmax_step(q, k, v, start, N, m_i, l_i, acc, qk_scale, BK: tl.constexpr, INTERPRET: tl.constexpr):
    """One online-softmax update with the key block at row `start` (keys at or past N masked): acc += P V."""
    s = keys_before_n(mma(q, tl.trans(k), INTERPRET), start, N, BK)
    m_new, l_i, corr, p = online_step(s, qk_scale, m_i, l_i, 0.0)
    acc = mma_acc(p.to(v.dtype), v, acc * corr[:, None], INTERPRET)
    return m_new, l_i, acc


@triton.jit
def sla2_fwd_kernel(
    Q, K, V, IDX, ALPHA, O, O_S, LSE,  # O_S: the sparse branch's O_s (o's strides), stored with STORE_OS
    HI, ZI,  # from forward.linear_state: bf16 [BH, nq, D, D], fp32 [BH, nq, D]
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sob, soh, son, sod,
    sab, sah, saq,
    N, H, NQ, TOPK, sm_scale,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, LINEAR: tl.constexpr, INTERPRET: tl.constexpr,
    STORE_OS: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    bh64 = bh.to(tl.int64)

    offs_m = pid_m * BQ + tl.arange(0, BQ)
    offs_d = tl.arange(0, D)
    q_ok = offs_m < N
    q = tl.load(Q + b64 * sqb + h64 * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
                mask=q_ok[:, None], other=0.0)
    k_base = K + b64 * skb + h64 * skh
    v_base = V + b64 * svb + h64 * svh
    idx_base = IDX + (bh64 * NQ + pid_m) * TOPK

    qk_scale = sm_scale * LOG2E
    m_i = tl.full([BQ], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BQ], dtype=tl.float32)
    acc = tl.zeros([BQ, D], dtype=tl.float32)
    # One selected block per iteration: its index is a scalar, so the tiles' addresses are fixed pointer tensors
    # plus one scalar offset (no per-element index arithmetic in the loop). Two blocks per iteration (a gathered
    # 128-key tile) measured slower on the H100 (0.996 vs 0.849 ms, Wan-1.3B at 97%) and was removed.
    offs_k = tl.arange(0, BK)
    k_ptrs = k_base + offs_k[:, None] * skn + offs_d[None, :] * skd
    v_ptrs = v_base + offs_k[:, None] * svn + offs_d[None, :] * svd
    for it in range(0, TOPK):
        start = tl.load(idx_base + it).to(tl.int64) * BK
        kv_ok = (start + offs_k) < N  # ragged last key block
        k = tl.load(k_ptrs + start * skn, mask=kv_ok[:, None], other=0.0)
        v = tl.load(v_ptrs + start * svn, mask=kv_ok[:, None], other=0.0)
        m_i, l_i, acc = softmax_step(q, k, v, start, N, m_i, l_i, acc, qk_scale, BK, INTERPRET)

    o = acc / l_i[:, None]
    o_offs = b64 * sob + h64 * soh + offs_m[:, None] * son + offs_d[None, :] * sod
    if STORE_OS:
        tl.store(O_S + o_offs, o.to(O_S.dtype.element_ty), mask=q_ok[:, None])
    if LINEAR:
        alpha = tl.load(ALPHA + b64 * sab + h64 * sah + pid_m * saq)
        h_i, z_i = load_linear_state(HI, ZI, bh64, pid_m, NQ, D)
        o = alpha * o + (1.0 - alpha) * linear_output(q, h_i, z_i, INTERPRET)
    tl.store(O + o_offs, o.to(O.dtype.element_ty), mask=q_ok[:, None])
    tl.store(LSE + (bh64 * N) + offs_m, (m_i + tl.log2(l_i)) * LN2, mask=q_ok)
