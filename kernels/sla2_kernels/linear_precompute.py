"""One pass over K and V per key block: what the linear branch and the router need (docs/method.md: Linear
branch, Router).

For key block j (b_k rows, ragged last block masked):
  φK_j = softmax over head_dim of K_j (rounded to K's dtype), padded rows zeroed
  h_j  = φK_jᵀ V_j                                             -> hblk  [BH, nk_pad, D, D] bf16
  z_j  = colsum φK_j                                           -> zblk  [BH, nk, D]    fp32
  colsum K_j (router pooling and the smoothing mean)           -> ksum  [BH, nk, D]    fp32
  (quant) K̂_j, s_k,j, V̂_jᵀ (lowbit_quant.quantize_kv_block)      -> k8, sk, v8t
  Σ z_j and Σ colsum K_j over the program's blocks            -> zpart [2, BH, S, D]  fp32
S = number of programs along the key blocks; kv_totals_kernel sums the S partials into Z_tot and μ_K (one small
launch instead of a torch sum over the nk blocks' sums, which took 20 µs at the Wan-1.3B shape: H100, ncu).
The programs cover the h buffer's padded length (nk rounded up to NK_ALIGN): a block past the last one loads only
masked rows, so its h_j is zero and stored as the padding, with no fill launch of its own.
With QUANT, μ_K and s_v come from kv_stats_kernel's partials (every program sums them, S·D floats from L2), and
each block is rounded while its tiles are loaded: one read of K and V for h_j, z_j, K̂ and V̂ together.
"""

import triton
import triton.language as tl

from .dot import mma
from .lowbit_quant import quantize_kv_block, smoothing_and_v_scale


@triton.jit
def kv_precompute_kernel(
    K, V,  # [B, H, N, D] or [B, N, H, D] through strides
    HBLK, ZBLK, KSUM, ZPART,
    STATS, KMEAN, K8, SK, V8T, SV,  # QUANT only: kv_stats_kernel's partials in, μ_K, K̂, s_k, V̂ᵀ, s_v out
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    N, H, NK, NK_PAD, BLOCKS_PER_SPLIT, NSPLIT,  # NK_PAD: blocks per head in HBLK (zero blocks after NK)
    BK: tl.constexpr, D: tl.constexpr, QUANT: tl.constexpr, INTERPRET: tl.constexpr,
    SOFT_E4M3: tl.constexpr,  # e4m3 rounding in software (quant_math.to_e4m3): the interpreter's, or a GPU test's
):
    pid_s = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh
    bh64 = bh.to(tl.int64)
    offs_r = tl.arange(0, BK)
    offs_d = tl.arange(0, D)

    z_acc = tl.zeros([D], dtype=tl.float32)
    k_acc = tl.zeros([D], dtype=tl.float32)
    if QUANT:
        mu, s_v = smoothing_and_v_scale(STATS, bh64, tl.num_programs(1), NSPLIT, N, D)
        if pid_s == 0:
            tl.store(KMEAN + bh64 * D + offs_d, mu)
            tl.store(SV + bh64 * D + offs_d, s_v)
    for jj in range(0, BLOCKS_PER_SPLIT):
        j = pid_s * BLOCKS_PER_SPLIT + jj
        rows = j * BK + offs_r
        row_ok = rows < N
        blk_ok = (offs_d * 0 + j) < NK  # [D]; the last programs run past the last block into h's padding
        kt = tl.load(k_base + rows[:, None] * skn + offs_d[None, :] * skd, mask=row_ok[:, None], other=0.0)
        vt = tl.load(v_base + rows[:, None] * svn + offs_d[None, :] * svd, mask=row_ok[:, None], other=0.0)
        kf = kt.to(tl.float32)
        k_col = tl.sum(kf, axis=0)  # padded rows load as zeros, so blocks past NK add nothing
        tl.store(KSUM + (bh64 * NK + j) * D + offs_d, k_col, mask=blk_ok)
        k_acc += k_col
        # φ = softmax over head_dim; a padded row would give 1/D, so it is zeroed (as the reference).
        e = tl.exp(kf - tl.max(kf, axis=1)[:, None])
        fk = e / tl.sum(e, axis=1)[:, None]
        fk = tl.where(row_ok[:, None], fk, 0.0).to(kt.dtype)
        zj = tl.sum(fk.to(tl.float32), axis=0)
        tl.store(ZBLK + (bh64 * NK + j) * D + offs_d, zj, mask=blk_ok)
        z_acc += zj
        hj = mma(tl.trans(fk), vt, INTERPRET)
        tl.store(HBLK + (bh64 * NK_PAD + j) * D * D + offs_d[:, None] * D + offs_d[None, :], hj.to(tl.bfloat16),
                 mask=((offs_d * 0 + j) < NK_PAD)[:, None])  # past NK: zero (no valid row), h's padding
        if QUANT:
            quantize_kv_block(kf, vt, row_ok, mu, s_v, j, rows, bh64, K8, SK, V8T, NK * BK, NK, D, SOFT_E4M3)

    part = bh64 * NSPLIT + pid_s
    tl.store(ZPART + part * D + offs_d, z_acc)
    # the K sums one [BH, S, D] slab further on
    tl.store(ZPART + (tl.num_programs(1) * NSPLIT + part) * D + offs_d, k_acc)


@triton.jit
def kv_totals_kernel(
    ZPART, ZTOT, KMEAN,  # ZPART fp32 [2, BH, NSPLIT, D] (kv_precompute_kernel's); ZTOT, KMEAN fp32 [BH, D]
    N, NSPLIT,
    D: tl.constexpr, WRITE_MEAN: tl.constexpr,  # False: μ_K was written by the precompute (quant) already
):
    """Z_tot = Σ z_j and μ_K = Σ K / N of one head from the precompute's per-program partials."""
    bh64 = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, D)
    z_tot = tl.zeros([D], dtype=tl.float32)
    k_tot = tl.zeros([D], dtype=tl.float32)
    for s in range(0, NSPLIT):
        z_tot += tl.load(ZPART + (bh64 * NSPLIT + s) * D + offs_d)
        k_tot += tl.load(ZPART + ((tl.num_programs(0) + bh64) * NSPLIT + s) * D + offs_d)
    tl.store(ZTOT + bh64 * D + offs_d, z_tot)
    if WRITE_MEAN:
        tl.store(KMEAN + bh64 * D + offs_d, tl.math.div_rn(k_tot, tl.zeros([D], dtype=tl.float32) + N))
