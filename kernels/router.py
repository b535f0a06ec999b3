"""The block router (SLA2.md §2): pooled, projected block scores. Top-k runs in the wrapper.

scores[i, j] = (Q̄_i Wq)·(K̄_j Wk) / √D, Q̄ = mean-pool(Q, b_q), K̄_j = mean-pool(K − mean_tokens K, b_k).
Pooling the smoothed K needs no second pass: mean_j(K − μ) = colsum(K_j)/count_j − μ, and
μ = Σ_j colsum(K_j) / N, so both come from the per-block column sums (written by kv_precompute_kernel
or by block_colsum_kernel when the router runs alone). Ragged tails divide by their true count.
Projections and scores are fp32 with IEEE dots (not tf32): Top-k must see the reference's ordering.
"""

import triton
import triton.language as tl


@triton.jit
def block_colsum_kernel(
    X, OUT,  # X [B, H, N, D] or [B, N, H, D] via strides; OUT fp32 [BH, nb, D]
    sxb, sxh, sxn, sxd,
    N, H, NB,
    BLK: tl.constexpr, D: tl.constexpr,
):
    j = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = j * BLK + tl.arange(0, BLK)
    offs_d = tl.arange(0, D)
    x = tl.load(
        X + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh + rows[:, None] * sxn + offs_d[None, :] * sxd,
        mask=(rows < N)[:, None], other=0.0,
    )
    tl.store(OUT + (bh.to(tl.int64) * NB + j) * D + offs_d, tl.sum(x.to(tl.float32), axis=0))


@triton.jit
def router_keys_kernel(
    KSUM, KMEAN, WK, KP,  # KSUM [BH, nk, D], KMEAN [BH, D], WK [H, D, D], KP [BH, nk, D] (all fp32)
    N, H, NK, scale,
    RB: tl.constexpr, BK: tl.constexpr, D: tl.constexpr,
):
    """KP_j = (colsum K_j / count_j − μ) @ Wk[h] · scale, for RB key blocks per program."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    h = bh % H
    bh64 = bh.to(tl.int64)
    j = pid * RB + tl.arange(0, RB)
    offs_d = tl.arange(0, D)
    j_ok = j < NK
    ks = tl.load(KSUM + (bh64 * NK + j[:, None]) * D + offs_d[None, :], mask=j_ok[:, None], other=0.0)
    count = tl.minimum(N - j * BK, BK).to(tl.float32)
    count = tl.where(j_ok, count, 1.0)
    mu = tl.load(KMEAN + bh64 * D + offs_d)
    kbar = ks / count[:, None] - mu[None, :]
    w = tl.load(WK + h.to(tl.int64) * D * D + offs_d[:, None] * D + offs_d[None, :])
    kp = tl.dot(kbar, w, input_precision="ieee") * scale
    tl.store(KP + (bh64 * NK + j[:, None]) * D + offs_d[None, :], kp, mask=j_ok[:, None])


@triton.jit
def router_scores_kernel(
    Q, WQ, KP, SCORES,  # Q via strides; WQ [H, D, D]; KP [BH, nk, D]; SCORES [BH, nq, nk] fp32
    sqb, sqh, sqn, sqd,
    N, H, NQ, NK,
    BQ: tl.constexpr, D: tl.constexpr, SB: tl.constexpr,
):
    """One query block: mean-pool its rows, project by Wq[h], dot with every projected key block."""
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    bh64 = bh.to(tl.int64)
    rows = i * BQ + tl.arange(0, BQ)
    offs_d = tl.arange(0, D)
    x = tl.load(
        Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + rows[:, None] * sqn + offs_d[None, :] * sqd,
        mask=(rows < N)[:, None], other=0.0,
    )
    count = tl.minimum(N - i * BQ, BQ).to(tl.float32)
    q_bar = tl.sum(x.to(tl.float32), axis=0) / count  # [D]
    w = tl.load(WQ + h.to(tl.int64) * D * D + offs_d[:, None] * D + offs_d[None, :])  # [D(in), D(out)]
    q_proj = tl.sum(q_bar[:, None] * w, axis=0)  # [D] = q̄ @ Wq
    offs_s = tl.arange(0, SB)
    for j0 in range(0, NK, SB):
        j = j0 + offs_s
        kp = tl.load(KP + (bh64 * NK + j[:, None]) * D + offs_d[None, :], mask=(j < NK)[:, None], other=0.0)
        sc = tl.sum(kp * q_proj[None, :], axis=1)
        tl.store(SCORES + (bh64 * NQ + i) * NK + j, sc, mask=j < NK)
