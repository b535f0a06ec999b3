"""The low-bit sparse branch's K, V side (docs/method.md, Low-bit sparse branch and QAT), jit code only.

K: smoothed (K − μ, μ = per-head token mean), INT8 with one scale per key block, s_k = max|K_j − μ|/127.
V: FP8 e4m3 with one scale per (head, channel) over all tokens, s_v = max|V[:, c]|/448, stored
   TRANSPOSED [BH, D, nk·b_k]: Hopper's 8-bit wgmma needs the B operand K-major (the key axis
   contiguous), as in Triton's own FP8 attention tutorial.
Padded rows of the ragged last block are written as 0. Each key block is selected by several query
blocks, so quantising once per key block is cheaper than in the main loop (the elementwise work would repeat).

μ and s_v are reductions over every token of a head, so no element can be rounded before they are known:
`kv_stats_kernel` makes the reduction (Σ K and max|V| per program's run of key blocks, nothing per block), and
the precompute pass (linear_precompute.py) rounds each block with `quantize_kv_block` while it has the block's
K and V tiles loaded for h_j anyway. Writing K̂, V̂ in a pass of their own re-read K and V a third time.
"""

import triton
import triton.language as tl

from .quant_math import FP8_E4M3_MAX, INT8_MAX, MIN_SCALE, quantize_int8, to_e4m3


@triton.jit
def kv_stats_kernel(
    K, V, STATS,  # STATS fp32 [2, BH, NSPLIT, D]: Σ K over the program's rows, then max|V| over them
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    N, H, BLOCKS_PER_SPLIT, NSPLIT,
    BK: tl.constexpr, D: tl.constexpr,
):
    pid_s = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh
    offs_r = tl.arange(0, BK)
    offs_d = tl.arange(0, D)
    k_acc = tl.zeros([D], dtype=tl.float32)
    v_max = tl.zeros([D], dtype=tl.float32)
    for jj in range(0, BLOCKS_PER_SPLIT):
        rows = (pid_s * BLOCKS_PER_SPLIT + jj) * BK + offs_r
        row_ok = (rows < N)[:, None]
        kt = tl.load(k_base + rows[:, None] * skn + offs_d[None, :] * skd, mask=row_ok, other=0.0)
        vt = tl.load(v_base + rows[:, None] * svn + offs_d[None, :] * svd, mask=row_ok, other=0.0)
        k_acc += tl.sum(kt.to(tl.float32), axis=0)
        v_max = tl.maximum(v_max, tl.max(tl.abs(vt.to(tl.float32)), axis=0))
    part = bh.to(tl.int64) * NSPLIT + pid_s
    tl.store(STATS + part * D + offs_d, k_acc)
    tl.store(STATS + (tl.num_programs(1) * NSPLIT + part) * D + offs_d, v_max)


@triton.jit
def smoothing_and_v_scale(STATS, bh64, BH, NSPLIT, N, D: tl.constexpr):
    """(μ, s_v), each fp32 [D], of head bh64 from kv_stats_kernel's partials: μ = Σ K / N, s_v = max|V| / 448
    (at least MIN_SCALE). IEEE divisions (div_rn), as torch's, so the scales equal the reference's."""
    offs_d = tl.arange(0, D)
    k_tot = tl.zeros([D], dtype=tl.float32)
    v_max = tl.zeros([D], dtype=tl.float32)
    for s in range(0, NSPLIT):
        k_tot += tl.load(STATS + (bh64 * NSPLIT + s) * D + offs_d)
        v_max = tl.maximum(v_max, tl.load(STATS + ((BH + bh64) * NSPLIT + s) * D + offs_d))
    zero = tl.zeros([D], dtype=tl.float32)
    mu = tl.math.div_rn(k_tot, zero + N)  # N may be specialised to a constant: no .to()
    s_v = tl.maximum(tl.math.div_rn(v_max, zero + FP8_E4M3_MAX), MIN_SCALE)
    return mu, s_v


@triton.jit
def quantize_kv_block(kf, vt, row_ok, mu, s_v, j, rows, bh64, K8, SK, V8T, LDK, NK,
                      D: tl.constexpr, SOFT_E4M3: tl.constexpr):
    """Round key block j (fp32 K tile kf and V tile vt, [BK, D], padded rows zero) into K̂ (INT8 per block, smoothed
    by μ), its scale s_k and V̂ᵀ (e4m3 at the per-channel scale s_v). Blocks past the last (j ≥ NK) store nothing."""
    offs_d = tl.arange(0, D)
    blk_ok = (rows * 0 + j) < NK  # [BK]
    ks = tl.where(row_ok[:, None], kf - mu[None, :], 0.0)
    s_k = tl.maximum(tl.math.div_rn(tl.max(tl.max(tl.abs(ks), axis=1), axis=0), INT8_MAX), MIN_SCALE)
    tl.store(K8 + bh64 * LDK * D + rows[:, None] * D + offs_d[None, :], quantize_int8(ks, s_k),
             mask=blk_ok[:, None])
    tl.store(SK + bh64 * NK + j, s_k, mask=j < NK)
    v8 = to_e4m3(tl.math.div_rn(vt.to(tl.float32), s_v[None, :]), SOFT_E4M3)
    # Transposed in registers so that the store runs along the contiguous key axis.
    tl.store(V8T + bh64 * D * LDK + offs_d[:, None] * LDK + rows[None, :], tl.trans(v8), mask=blk_ok[None, :])
