"""Fused SLA2 forward with the low-bit sparse branch: INT8 QKᵀ, FP8 e4m3 PV, fp32 sums (docs/method.md, Low-bit
sparse branch and QAT).

Same program layout and linear branch (epilogue on forward.linear_state's H_I, Z_I) as sla2_fwd.py: the linear
branch stays bf16. Sparse branch:
  Q̂ = INT8(Q_i / s_q), s_q = max|Q_i|/127 (per query block, quantised here, once per program)
  K̂, s_k, V̂ᵀ from the precompute pass (lowbit_quant.py: smoothed K per key block; V per channel, transposed)
  S = (Q̂ K̂ᵀ) s_q s_k / √D;  P̃_j = exp(S_j − m_j) ∈ [0, 1] -> e4m3 at scale 448;  acc += P̂_j V̂_j (fp32)
  O_s = acc · s_v / l, l = rowsum of the unquantised 448·exp(S − m), m the final row maximum.
The kernel keeps the scores unscaled (INT32 products converted to fp32) and applies s_q s_k / √D, the shift by
m and the factor 448 in one fused multiply-add before each exp2 (running_max_step).
With STORE_OS, O_s is stored too (O_S, o's layout): QAT's dα is the derivative of this forward,
Σ dO·(O_s − O_l), and O_s cannot be recovered from O without dividing by α (docs/method.md, Backward).
Which m_j P̃ is rounded against matters: e4m3 keeps 3 mantissa bits, so on flat attention (random data) the
choice moves the output by 1–2% relative L1, as much as the quantisation error itself. By default
(EXACT_MAX=False, FwdConfig.exact_max) m_j is the running maximum over the selected blocks taken so far,
block j included, and acc and l are rescaled by exp(m_{j−1} − m_j) at each step: SageAttention2's online
arithmetic, one pass over the blocks, and the reference's (fake_quant_sparse_attention, running_max=True),
which walks the blocks in ascending order as the router's sorted index lists give them. EXACT_MAX=True
rounds against the exact row maximum instead: pass 1 finds it by one extra INT8 MMA per block, and pass 2
then needs no rescaling; it matches fake_quant_sparse_attention(..., running_max=False). Main kernel on the
H100 at Wan-1.3B (2026-11-27): one pass 0.93 ms, two passes 1.10 ms.
Each P̂V̂ product is a fresh dot added to the fp32 accumulator in registers: Hopper's FP8 MMA keeps
about 22 bits while accumulating, so long chains are flushed every b_k keys (two-level accumulation).
lse is put back on the scale of the original Q, K: smoothing shifted row r by q_r·μ/√D.
"""

import triton
import triton.language as tl

from .quant_math import LN2, LOG2_FP8_E4M3_MAX, LOG2E, int8_block, to_e4m3
from .sla2_fwd import keys_before_n, linear_output, load_linear_state, online_step


@triton.jit
def raw_scores(q8, k8, start, N, BK: tl.constexpr):
    """INT8 Q̂K̂ᵀ of one key block [BQ, BK] in fp32, before its scale; −inf on keys at or past N."""
    return keys_before_n(tl.dot(q8, tl.trans(k8)).to(tl.float32), start, N, BK)


@triton.jit
def int8_scores(it, q8, qk_scale, idx_base, k8_ptrs, sk_base, N, BK: tl.constexpr, D: tl.constexpr):
    """Raw scores against the `it`-th selected key block (raw_scores) and their log2-domain scale. One block per
    iteration indexed with a scalar, so the K̂ tile is a fixed pointer tile plus one offset (as sla2_fwd.py's
    loop); two gathered blocks per iteration measured slower (H100, Wan-1.3B at 97%: 1.50 vs 1.10 ms) and were
    removed. Returns (s, scale, start row of the block)."""
    blk = tl.load(idx_base + it)
    start = blk.to(tl.int64) * BK
    k8 = tl.load(k8_ptrs + start * D)  # K̂ is stored padded to nk·b_k rows (zeros): no mask
    return raw_scores(q8, k8, start, N, BK), qk_scale * tl.load(sk_base + blk), start


@triton.jit
def running_max_step(s, scale, m_i, l_i, INTERPRET: tl.constexpr):
    """One online-softmax step with P̃ rounded against the running row maximum (SageAttention2's arithmetic), on
    raw scores s whose log2-domain value is s·scale: (m_new, l_new, corr, P̂ e4m3 at scale 448); the caller
    rescales its accumulator by corr. The 448 rides in the exponent (sla2_fwd.online_step), so l carries it and
    O_s = acc·s_v / l. IN_RANGE: the exponent is at most log2 448 up to rounding, and the GPU's conversion
    saturates."""
    m_new, l_new, corr, p = online_step(s, scale, m_i, l_i, LOG2_FP8_E4M3_MAX)
    return m_new, l_new, corr, to_e4m3(p, INTERPRET, IN_RANGE=True)


@triton.jit
def sla2_fwd_lowbit_kernel(
    Q, IDX, ALPHA, O, O_S, LSE,  # O_S: the sparse branch's output, with O's strides
    HI, ZI,  # from forward.linear_state: bf16 [BH, nq, D, D], fp32 [BH, nq, D]
    K8, SK, V8T, SV, KMEAN,
    sqb, sqh, sqn, sqd,
    sob, soh, son, sod,
    sab, sah, saq,
    N, H, NQ, NK, TOPK, sm_scale,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, LINEAR: tl.constexpr, INTERPRET: tl.constexpr,
    EXACT_MAX: tl.constexpr, STORE_OS: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    bh64 = bh.to(tl.int64)
    LDK = NK * BK  # rows of the padded per-head K8 / V8ᵀ buffers

    offs_m = pid_m * BQ + tl.arange(0, BQ)
    offs_d = tl.arange(0, D)
    q_ok = offs_m < N
    q = tl.load(Q + b64 * sqb + h64 * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
                mask=q_ok[:, None], other=0.0)
    qf = q.to(tl.float32)
    q8, s_q = int8_block(qf)
    mu = tl.load(KMEAN + bh64 * D + offs_d)
    shift = tl.sum(qf * mu[None, :], axis=1) * sm_scale  # smoothing removed q·μ/√D from every score
    k8_base = K8 + bh64 * LDK * D
    v8_base = V8T + bh64 * D * LDK
    idx_base = IDX + (bh64 * NQ + pid_m) * TOPK
    sk_base = SK + bh64 * NK
    qk_scale = s_q * sm_scale * LOG2E

    offs_k = tl.arange(0, BK)
    k8_ptrs = k8_base + offs_k[:, None] * D + offs_d[None, :]
    v8_ptrs = v8_base + offs_d[:, None] * LDK + offs_k[None, :]

    # Pass 1 (EXACT_MAX only): the exact row maximum of the quantised scores (log2 domain).
    m_i = tl.full([BQ], float("-inf"), dtype=tl.float32)
    for it in range(0, TOPK if EXACT_MAX else 0):
        s, scale, _start = int8_scores(it, q8, qk_scale, idx_base, k8_ptrs, sk_base, N, BK, D)
        m_i = tl.maximum(m_i, tl.max(s, axis=1) * scale)

    # Main pass: P̃ against the exact maximum (EXACT_MAX) or the running one (default), FP8 PV. l carries P̃'s
    # factor 448 (running_max_step).
    l_i = tl.zeros([BQ], dtype=tl.float32)
    acc = tl.zeros([BQ, D], dtype=tl.float32)
    for it in range(0, TOPK):
        s, scale, start = int8_scores(it, q8, qk_scale, idx_base, k8_ptrs, sk_base, N, BK, D)
        if EXACT_MAX:
            p = tl.exp2(s * scale - (m_i - LOG2_FP8_E4M3_MAX)[:, None])
            l_i += tl.sum(p, axis=1)
            p8 = to_e4m3(p, INTERPRET, IN_RANGE=True)
        else:  # running maximum, as the reference's default (module docstring)
            m_i, l_i, corr, p8 = running_max_step(s, scale, m_i, l_i, INTERPRET)
            acc = acc * corr[:, None]
        v8t = tl.load(v8_ptrs + start)  # V̂ᵀ is padded too
        acc += tl.dot(p8, tl.trans(v8t))

    s_v = tl.load(SV + bh64 * D + offs_d)
    o = acc * s_v[None, :] / l_i[:, None]
    o_offs = b64 * sob + h64 * soh + offs_m[:, None] * son + offs_d[None, :] * sod
    if STORE_OS:
        tl.store(O_S + o_offs, o.to(O_S.dtype.element_ty), mask=q_ok[:, None])
    if LINEAR:
        alpha = tl.load(ALPHA + b64 * sab + h64 * sah + pid_m * saq)
        # Q again (from L2): keeping the tile in registers through the loops would cost 32 registers a thread.
        q = tl.load(Q + b64 * sqb + h64 * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
                    mask=q_ok[:, None], other=0.0)
        h_i, z_i = load_linear_state(HI, ZI, bh64, pid_m, NQ, D)  # bf16: only the sparse branch is low-bit
        o = alpha * o + (1.0 - alpha) * linear_output(q, h_i, z_i, INTERPRET)
    tl.store(O + o_offs, o.to(O.dtype.element_ty), mask=q_ok[:, None])
    tl.store(LSE + (bh64 * N) + offs_m, (m_i + tl.log2(l_i) - LOG2_FP8_E4M3_MAX) * LN2 + shift, mask=q_ok)
