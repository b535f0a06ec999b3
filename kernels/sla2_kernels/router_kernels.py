"""The block router (docs/method.md, Router): pooled, projected block scores. Host side: routing.py.

scores[i, j] = (Q̄_i Wq)·(K̄_j Wk) / √D, Q̄ = mean-pool(Q, b_q), K̄_j = mean-pool(K − mean_tokens K, b_k).
Pooling the smoothed K needs no second pass: mean_j(K − μ) = colsum(K_j)/count_j − μ with
μ = Σ_j colsum(K_j) / N, so both come from per-block column sums (kv_precompute_kernel writes them for K
during its pass over K and V; pool_sums_kernel when the router runs alone). Ragged tails divide by
their true count. Four launches, each sized to its data:
  pool_sums_kernel        Q's block sums (and K's, with partial totals for μ), each program a run of blocks: the
                          only pass over Q (and K when alone), bandwidth-bound
  pooled_project_kernel   RB pooled rows per program, Q and K in one grid: (sums / count − μ) @ W[h], Wq and Wk
                          read once per RB rows
  block_scores_kernel     a [QT, nk-tile] tile of Q̄Wq · (K̄Wk)ᵀ per program
  topk_kernel             R rows of scores per program: radix selection of the k-th largest, selected
                          indices written in ascending order
Q and K share each launch (rather than one each, and μ_K as a torch sum and division: 8 launches), because in an
eager call every launch costs host time.
Projections and scores are 3xTF32 dots: fp32-accurate on the tensor cores (plain tf32 would reorder near ties
against the reference's fp32). IEEE-fp32 dots spilled (router 1.25 ms, H100). A version with explicit fp32
FMA products ([rows, 4, D] broadcasts) was right under the interpreter but wrong on the H100 with Triton 3.6
(2026-11-27, scores off by up to 0.18) and no faster: not used.
"""

import triton
import triton.language as tl

PARTS_TILE = tl.constexpr(64)  # μ_K's partial sums added a [PARTS_TILE, DC] load at a time (_project_rows)


@triton.jit
def _colsum_run(X, OUT, PART, sxb, sxh, sxn, sxd, N, H, NB, PER, NSPLIT,
                BLK: tl.constexpr, D: tl.constexpr, WRITE_PART: tl.constexpr):
    """Column sums of PER consecutive blocks of one head (this program's run) -> OUT fp32 [BH, nb, D]; with
    WRITE_PART also their total -> PART fp32 [BH, NSPLIT, D] (the smoothing mean's partial sum)."""
    pid_s = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    base = X + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh
    bh64 = bh.to(tl.int64)
    offs_r = tl.arange(0, BLK)
    offs_d = tl.arange(0, D)
    total = tl.zeros([D], dtype=tl.float32)
    for jj in range(0, PER):
        j = pid_s * PER + jj
        rows = j * BLK + offs_r
        x = tl.load(base + rows[:, None] * sxn + offs_d[None, :] * sxd, mask=(rows < N)[:, None], other=0.0)
        col = tl.sum(x.to(tl.float32), axis=0)
        tl.store(OUT + (bh64 * NB + j) * D + offs_d, col, mask=(offs_d * 0 + j) < NB)
        total += col
    if WRITE_PART:
        tl.store(PART + (bh64 * NSPLIT + pid_s) * D + offs_d, total)


@triton.jit
def pool_sums_kernel(
    Q, K, QSUM, KSUM, KPART,  # Q, K [B, H, N, D] or [B, N, H, D] via strides; sums fp32 [BH, nq | nk, D]
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    N, H, NQ, NK, Q_PER, K_PER, NSPLIT,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr,
):
    """Grid (NSPLIT, BH, 1 or 2): axis 2 = 0 sums Q's blocks, = 1 K's (and K's partial totals, KPART
    [BH, NSPLIT, D]); each program a run of Q_PER / K_PER blocks. The router's one pass over Q (and over K when
    no precompute state is shared), in one launch."""
    if tl.program_id(2) == 0:
        _colsum_run(Q, QSUM, KPART, sqb, sqh, sqn, sqd, N, H, NQ, Q_PER, NSPLIT, BQ, D, False)
    else:
        _colsum_run(K, KSUM, KPART, skb, skh, skn, skd, N, H, NK, K_PER, NSPLIT, BK, D, True)


@triton.jit
def _project_rows(SUMS, W, OUT, MEAN, pid, bh64, h, N, NB, NPARTS, scale,
                  RB: tl.constexpr, BLK: tl.constexpr, D: tl.constexpr, DC: tl.constexpr, SUB_MEAN: tl.constexpr):
    """OUT_j = (SUMS_j / count_j − μ) @ W[h] · scale for RB blocks, DC input columns at a time. μ (with SUB_MEAN):
    MEAN [BH, D] when NPARTS is 0, else Σ of NPARTS partial sums MEAN [BH, NPARTS, D] divided by N, summed
    PARTS_TILE partials a load (pool_sums_kernel writes one per program, a few hundred at the Wan shapes: one
    at a time, every program's sums took longer than the pooling they save)."""
    j = pid * RB + tl.arange(0, RB)
    offs_d = tl.arange(0, D)
    offs_c = tl.arange(0, DC)
    offs_p = tl.arange(0, PARTS_TILE)
    j_ok = j < NB
    count = tl.where(j_ok, tl.minimum(N - j * BLK, BLK), 1).to(tl.float32)
    w_base = W + h.to(tl.int64) * D * D
    acc = tl.zeros([RB, D], dtype=tl.float32)
    for c in range(0, D, DC):
        sums = tl.load(SUMS + (bh64 * NB + j[:, None]) * D + c + offs_c[None, :], mask=j_ok[:, None], other=0.0)
        pooled = sums / count[:, None]
        if SUB_MEAN:
            if NPARTS == 0:
                mean = tl.load(MEAN + bh64 * D + c + offs_c)
            else:
                tot = tl.zeros([DC], dtype=tl.float32)
                for s in range(0, NPARTS, PARTS_TILE):
                    parts = tl.load(MEAN + (bh64 * NPARTS + s + offs_p[:, None]) * D + c + offs_c[None, :],
                                    mask=(s + offs_p < NPARTS)[:, None], other=0.0)
                    tot += tl.sum(parts, axis=0)
                mean = tl.math.div_rn(tot, tl.zeros([DC], dtype=tl.float32) + N)
            pooled = pooled - mean[None, :]
        w = tl.load(w_base + (c + offs_c[:, None]) * D + offs_d[None, :])
        acc = tl.dot(pooled, w, acc, input_precision="tf32x3")
    tl.store(OUT + (bh64 * NB + j[:, None]) * D + offs_d[None, :], acc * scale, mask=j_ok[:, None])


@triton.jit
def pooled_project_kernel(
    QSUM, KSUM, KMEAN, WQ, WK, QP, KP,  # sums [BH, nb, D]; KMEAN: see _project_rows; W [H, D, D]; out [BH, nb, D]
    N, H, NQ, NK, NPARTS, k_scale,
    RB: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, DC: tl.constexpr,
):
    """Grid (⌈max(nq, nk)/RB⌉, BH, 2): axis 2 = 0 projects RB pooled Q blocks, = 1 RB pooled, smoothed K blocks
    (scaled by k_scale = 1/√D); Wq and Wk each read once per RB rows. μ_K: the precompute's KMEAN (NPARTS = 0) or
    pool_sums_kernel's NPARTS partial sums (NPARTS·D floats a program)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    h = bh % H
    bh64 = bh.to(tl.int64)
    if tl.program_id(2) == 0:
        if pid * RB < NQ:
            _project_rows(QSUM, WQ, QP, KMEAN, pid, bh64, h, N, NQ, 0, 1.0, RB, BQ, D, DC, False)
    elif pid * RB < NK:
        _project_rows(KSUM, WK, KP, KMEAN, pid, bh64, h, N, NK, NPARTS, k_scale, RB, BK, D, DC, True)


@triton.jit
def block_scores_kernel(
    QP, KP, SCORES,  # QP [BH, nq, D], KP [BH, nk, D] (already scaled by 1/√D), SCORES [BH, nq, nk]; fp32
    NQ, NK,
    QT: tl.constexpr, KT: tl.constexpr, D: tl.constexpr, DC: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_k = tl.program_id(1)
    bh64 = tl.program_id(2).to(tl.int64)
    i = pid_q * QT + tl.arange(0, QT)
    j = pid_k * KT + tl.arange(0, KT)
    offs_c = tl.arange(0, DC)
    sc = tl.zeros([QT, KT], dtype=tl.float32)
    for c in range(0, D, DC):
        qp = tl.load(QP + (bh64 * NQ + i[:, None]) * D + c + offs_c[None, :], mask=(i < NQ)[:, None], other=0.0)
        kp = tl.load(KP + (bh64 * NK + j[:, None]) * D + c + offs_c[None, :], mask=(j < NK)[:, None], other=0.0)
        sc = tl.dot(qp, tl.trans(kp), sc, input_precision="tf32x3")
    tl.store(SCORES + (bh64 * NQ + i[:, None]) * NK + j[None, :], sc, mask=(i < NQ)[:, None] & (j < NK)[None, :])


@triton.jit
def topk_kernel(
    SCORES, IDX,  # SCORES fp32 [rows, nk]; IDX int32 [rows, topk]
    ROWS, NK, TOPK,
    R: tl.constexpr, NKP: tl.constexpr,  # rows per program; nk rounded up to a power of two
):
    """Row-wise Top-k by radix selection, indices written ascending.

    Scores map to uint32 keys in the same order; the k-th largest key T is built bit by bit (32 rounds of
    count(key >= candidate) >= k). Selected: keys > T, then keys == T by ascending index until k are taken.
    No sort: 32 compare-and-count rounds over the row instead of a bitonic sort's log²(nk)/2 shuffles.
    """
    pid = tl.program_id(0)
    rows = pid * R + tl.arange(0, R)
    j = tl.arange(0, NKP)
    valid = (rows < ROWS)[:, None] & (j < NK)[None, :]
    s = tl.load(SCORES + rows[:, None].to(tl.int64) * NK + j[None, :], mask=valid, other=0.0)
    bits = s.to(tl.uint32, bitcast=True)
    # positive floats: set the sign bit; negative floats: flip every bit -> unsigned order == float order
    neg = (bits >> 31) == 1
    sign = tl.full([R, NKP], 1, tl.uint32) << 31
    key = tl.where(neg, ~bits, bits | sign)
    key = tl.where(valid, key, tl.zeros([R, NKP], dtype=tl.uint32))
    thr = tl.zeros([R], dtype=tl.uint32)
    one = tl.full([R], 1, tl.uint32)
    for i in tl.static_range(32):
        cand = thr | (one << (31 - i))
        cnt = tl.sum((key >= cand[:, None]).to(tl.int32), axis=1)
        thr = tl.where(cnt >= TOPK, cand, thr)
    above = valid & (key > thr[:, None])
    tied = valid & (key == thr[:, None])
    room = TOPK - tl.sum(above.to(tl.int32), axis=1)
    chosen = above | (tied & (tl.cumsum(tied.to(tl.int32), axis=1) <= room[:, None]))
    pos = tl.cumsum(chosen.to(tl.int32), axis=1) - 1
    tl.store(IDX + rows[:, None].to(tl.int64) * TOPK + pos, j[None, :] + 0 * pos, mask=chosen)
