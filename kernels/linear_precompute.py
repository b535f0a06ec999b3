"""One pass over K and V per key block: what the linear branch and the router need (SLA2.md §4, §2).

For key block j (b_k rows, ragged last block masked):
  φK_j = softmax over head_dim of K_j, padded rows zeroed      -> phik  [BH, nk·b_k, D] (q's dtype)
  z_j  = colsum φK_j                                           -> zblk  [BH, nk, D]     fp32
  h_j  = φK_jᵀ V_j, summed over the program's blocks           -> hpart [BH, S, D, D]  fp32
  colsum K_j (router pooling and the smoothing mean)           -> ksum  [BH, nk, D]     fp32
  (quant) max|V| per channel over the program's blocks         -> vmax  [BH, S, D]     fp32
S = number of splits along the key blocks; the wrapper sums the S partials into H_tot, Z_tot.

Why φK is stored and h_j is not: h_j is D×D per block, i.e. 2·D/b_k times the bytes of K_j (fp32:
4× at D=128, b_k=64), so writing and gathering it would dominate. The main kernel instead forms
Σ_sel h_j = Σ_sel φK_jᵀV_j with one extra MMA per selected block on V_j, which it already loads.
The same low-precision φK feeds H_tot here and Σ_sel there, so totals minus selected is consistent.
"""

import triton
import triton.language as tl

from .dot import mma_acc


@triton.jit
def kv_precompute_kernel(
    K, V,  # [B, H, N, D] or [B, N, H, D] through strides
    PHIK, ZBLK, KSUM, HPART, ZPART, VMAX,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    N, H, NK, BLOCKS_PER_SPLIT, NSPLIT,
    BK: tl.constexpr, D: tl.constexpr, QUANT: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_s = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh
    bh64 = bh.to(tl.int64)
    phik_base = PHIK + bh64 * NK * BK * D
    offs_r = tl.arange(0, BK)
    offs_d = tl.arange(0, D)

    h_acc = tl.zeros([D, D], dtype=tl.float32)
    z_acc = tl.zeros([D], dtype=tl.float32)
    v_max = tl.zeros([D], dtype=tl.float32)
    for jj in range(0, BLOCKS_PER_SPLIT):
        j = pid_s * BLOCKS_PER_SPLIT + jj
        rows = j * BK + offs_r
        row_ok = rows < N
        blk_ok = (offs_d * 0 + j) < NK  # [D]; the last split may run past the last block
        kt = tl.load(k_base + rows[:, None] * skn + offs_d[None, :] * skd, mask=row_ok[:, None], other=0.0)
        vt = tl.load(v_base + rows[:, None] * svn + offs_d[None, :] * svd, mask=row_ok[:, None], other=0.0)
        kf = kt.to(tl.float32)
        tl.store(KSUM + (bh64 * NK + j) * D + offs_d, tl.sum(kf, axis=0), mask=blk_ok)
        # φ = softmax over head_dim; a padded row would give 1/D, so it is zeroed (as the reference).
        e = tl.exp(kf - tl.max(kf, axis=1)[:, None])
        fk = e / tl.sum(e, axis=1)[:, None]
        fk = tl.where(row_ok[:, None], fk, 0.0).to(kt.dtype)
        tl.store(phik_base + rows[:, None] * D + offs_d[None, :], fk, mask=(rows < NK * BK)[:, None])
        zj = tl.sum(fk.to(tl.float32), axis=0)
        tl.store(ZBLK + (bh64 * NK + j) * D + offs_d, zj, mask=blk_ok)
        z_acc += zj
        h_acc = mma_acc(tl.trans(fk), vt, h_acc, INTERPRET)
        if QUANT:
            v_max = tl.maximum(v_max, tl.max(tl.abs(vt.to(tl.float32)), axis=0))

    part = bh64 * NSPLIT + pid_s
    tl.store(HPART + part * D * D + offs_d[:, None] * D + offs_d[None, :], h_acc)
    tl.store(ZPART + part * D + offs_d, z_acc)
    if QUANT:
        tl.store(VMAX + part * D + offs_d, v_max)
