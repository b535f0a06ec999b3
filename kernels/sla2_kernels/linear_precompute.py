"""One pass over K and V per key block: what the linear branch and the router need (docs/method.md: Linear
branch, Router).

For key block j (b_k rows, ragged last block masked):
  φK_j = softmax over head_dim of K_j (rounded to K's dtype), padded rows zeroed
  h_j  = φK_jᵀ V_j                                             -> hblk  [BH, nk_pad, D, D] bf16
  z_j  = colsum φK_j                                           -> zblk  [BH, nk, D]    fp32
  colsum K_j (router pooling and the smoothing mean)           -> ksum  [BH, nk, D]    fp32
  (quant) max|V| per channel over the program's blocks         -> vmax  [BH, S, D]     fp32
  Σ z_j and Σ colsum K_j over the program's blocks            -> zpart [2, BH, S, D]  fp32
S = number of programs along the key blocks; kv_totals_kernel reduces the S partials to Z_tot, μ_K and s_v (one
small launch; a torch sum over the nk blocks' sums took 20 µs at the Wan-1.3B shape: H100, ncu).
The programs cover the h buffer's padded length (nk rounded up to NK_ALIGN): a block past the last one loads only
masked rows, so its h_j is zero and stored as the padding, with no fill launch of its own.
With QUANT, K and V are rounded afterwards by quantize_kv_kernel (lowbit_quant.py): its μ_K and s_v are
reductions over every token of the head, known only once this pass has finished.

Why h_j is stored (2·D/b_k times the bytes of K_j, 200 MB at the Wan-1.3B shape): the linear branch of query
block I needs H_I = Σ_{j not selected by I} h_j. Gathering the selected blocks per query block (an MMA on
φK_j and V_j tiles per selection) moved as many bytes through L2 as the sparse branch itself and cost 60% on
top of it (H100, 2026-11-27). With h_j stored, H_I for every query block is one dense product
(1 − selection mask) @ h: [nq, nk] × [nk, D²] per head on the tensor cores (forward.linear_state).
h_j is bf16 because the products are: its rounding (2⁻⁹ relative, independent per block) averages out over
the ~nk blocks summed, far under the bf16 rounding of H_I itself.
"""

import triton
import triton.language as tl

from .dot import mma
from .quant_math import FP8_E4M3_MAX, MIN_SCALE


@triton.jit
def kv_precompute_kernel(
    K, V,  # [B, H, N, D] or [B, N, H, D] through strides
    HBLK, h_desc, ZBLK, KSUM, ZPART, VMAX,  # h_desc: HBLK as [BH·NK_PAD, D, D], blocks [1, D, D] (H_TMA)
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    N, H, NK, NK_PAD, BLOCKS_PER_SPLIT, NSPLIT,  # NK_PAD: blocks per head in HBLK (zero blocks after NK)
    BK: tl.constexpr, D: tl.constexpr, QUANT: tl.constexpr, INTERPRET: tl.constexpr,
    H_TMA: tl.constexpr,  # h_j stored by TMA from shared memory (PrecomputeConfig.tma_store)
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
    v_max = tl.zeros([D], dtype=tl.float32)
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
        hj = mma(tl.trans(fk), vt, INTERPRET).to(tl.bfloat16)  # past NK: zero (no valid row), h's padding
        if H_TMA:
            if j < NK_PAD:
                h_desc.store([bh * NK_PAD + j, 0, 0], hj.reshape(1, D, D))
        else:
            tl.store(HBLK + (bh64 * NK_PAD + j) * D * D + offs_d[:, None] * D + offs_d[None, :], hj,
                     mask=((offs_d * 0 + j) < NK_PAD)[:, None])
        if QUANT:
            v_max = tl.maximum(v_max, tl.max(tl.abs(vt.to(tl.float32)), axis=0))

    part = bh64 * NSPLIT + pid_s
    tl.store(ZPART + part * D + offs_d, z_acc)
    # the K sums one [BH, S, D] slab further on
    tl.store(ZPART + (tl.num_programs(1) * NSPLIT + part) * D + offs_d, k_acc)
    if QUANT:
        tl.store(VMAX + part * D + offs_d, v_max)


@triton.jit
def kv_totals_kernel(
    ZPART, VMAX, ZTOT, KMEAN, SV,  # ZPART fp32 [2, BH, NSPLIT, D], VMAX [BH, NSPLIT, D]; the rest fp32 [BH, D]
    N, NSPLIT,
    D: tl.constexpr, QUANT: tl.constexpr,
):
    """Per head, from the precompute's per-program partials: Z_tot = Σ z_j, μ_K = Σ K / N and (QUANT) the V scale
    s_v = max|V| / 448 per channel (at least MIN_SCALE). IEEE divisions (div_rn), as torch's, so μ_K and s_v equal
    the reference's up to the order of the sum."""
    bh64 = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, D)
    z_tot = tl.zeros([D], dtype=tl.float32)
    k_tot = tl.zeros([D], dtype=tl.float32)
    v_max = tl.zeros([D], dtype=tl.float32)
    for s in range(0, NSPLIT):
        z_tot += tl.load(ZPART + (bh64 * NSPLIT + s) * D + offs_d)
        k_tot += tl.load(ZPART + ((tl.num_programs(0) + bh64) * NSPLIT + s) * D + offs_d)
        if QUANT:
            v_max = tl.maximum(v_max, tl.load(VMAX + (bh64 * NSPLIT + s) * D + offs_d))
    tl.store(ZTOT + bh64 * D + offs_d, z_tot)
    tl.store(KMEAN + bh64 * D + offs_d, tl.math.div_rn(k_tot, k_tot * 0.0 + N))  # N may be a constant: no .to()
    if QUANT:
        tl.store(SV + bh64 * D + offs_d, tl.maximum(tl.math.div_rn(v_max, v_max * 0.0 + FP8_E4M3_MAX), MIN_SCALE))
