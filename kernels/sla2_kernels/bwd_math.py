"""The backward's per-tile arithmetic, shared by the pointer kernels (sla2_bwd.py) and the TMA kernels
(sla2_bwd_tma.py): they differ only in how tiles reach the program. Notation as in sla2_bwd.py."""

import triton
import triton.language as tl

from .dot import mma, mma_acc
from .quant_math import LOG2E
from .sla2_fwd import keys_before_n


@triton.jit
def phi_rows(x):
    """Softmax over the last axis (head_dim) in fp32."""
    xf = x.to(tl.float32)
    e = tl.exp(xf - tl.max(xf, axis=1)[:, None])
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def phi_inv(q, q_ok, z_i):
    """(bf16 φQ, 1/den) of a tile of query rows, den = φQ·Z_I in fp32 (0 on padding), as the pointer forward's
    epilogue (sla2_fwd.linear_output) forms them."""
    fq16 = phi_rows(q).to(tl.bfloat16)
    den = tl.sum(fq16.to(tl.float32) * z_i[None, :], axis=1)
    return fq16, tl.where(q_ok & (den > 0), 1.0 / den, 0.0)


@triton.jit
def centred_state(h32, z_i):
    """(bf16 H̃_I = H_I − Z_I v̄ᵀ, v̄ fp32 [D]) from the fp32 H_I, with v̄ = Σ_d H_I[d, :] / Σ_d Z_I[d] (O_l at a
    uniform φQ). Every O_l of the block is v̄ plus a small part, so H_I's rows are Z_I[d] v̄ plus small parts:
    rounding H_I itself to bf16 loses those parts (7% of dQ's linear part at Wan-1.3B's N in a float64 simulation on random inputs),
    rounding H̃_I keeps them. The formulas below are unchanged by the shift: O_l = φQ H̃_I / den + v̄ exactly
    (φQ·Z_I = den), and g H_Iᵀ − (g·O_l) Z_I = g H̃_Iᵀ − (g·Õ_l) Z_I with Õ_l = O_l − v̄."""
    sz = tl.sum(z_i, axis=0)
    vbar = tl.where(sz > 0, tl.sum(h32, axis=0) / sz, 0.0)
    return (h32 - z_i[:, None] * vbar[None, :]).to(tl.bfloat16), vbar


@triton.jit
def mixed_sparse_rows(do, DS_ROWS, OS_ROWS, q_ok, FROM_OS: tl.constexpr):
    """dO·O_s per row for dα, of the O_s that the forward mixed in (docs/method.md, Backward). FROM_OS (QAT): from
    the O_s^q the low-bit forward stored, so that dα = Σ dO·(O_s^q − O_l) is the exact derivative of that
    forward; the dq kernel's Ds is dO·O_s of the bf16 P, off by the low-bit error, which dα's difference of
    similar terms would magnify. Otherwise that Ds. DS_ROWS, OS_ROWS: these rows' pointers in Ds and O_s."""
    if FROM_OS:
        o_s = tl.load(OS_ROWS, mask=q_ok[:, None], other=0.0)
        return tl.sum(do.to(tl.float32) * o_s.to(tl.float32), axis=1)
    return tl.load(DS_ROWS, mask=q_ok, other=0.0)


@triton.jit
def linear_rows(do, d_s, q, q_ok, ht16, vbar, z_i, alpha, INTERPRET: tl.constexpr):
    """The linear-branch backward for a tile of query rows, given dO·O_s of the O_s the forward mixed in
    (mixed_sparse_rows): (this tile's Σ_rows (dO·O_s − Dl) for dα, its part of dZ_I, the linear dQ, bf16
    ψ = φQ / den for dH_I = (1 − α) ψᵀ dO).
    O_l is recomputed as the pointer forward's epilogue forms it (bf16 φQ on the tensor cores, fp32 denominator),
    from the centred state (centred_state)."""
    fq16, inv = phi_inv(q, q_ok, z_i)
    dof = do.to(tl.float32)
    ol_c = mma(fq16, ht16, INTERPRET) * inv[:, None]  # Õ_l = O_l − v̄
    d_lc = tl.sum(dof * ol_c, axis=1)  # dO·Õ_l
    d_l = d_lc + tl.sum(dof * vbar[None, :], axis=1)  # Dl = dO·O_l
    dalpha = tl.sum(tl.where(q_ok, d_s - d_l, 0.0), axis=0)
    # dZ_I = −Σ_i w_i ψ_i with ψ = φQ / den (bf16, as in dH_I), w = (1 − α) Dl; padding rows have inv = 0.
    w = (1.0 - alpha) * d_l
    psi16 = (fq16.to(tl.float32) * inv[:, None]).to(tl.bfloat16)
    dz = -tl.sum(psi16.to(tl.float32) * w[:, None], axis=0)
    # dφQ = (g H̃_Iᵀ − (g·Õ_l) Z_I) / den with g = (1 − α) dO; then through φ.
    g_h = mma(do.to(tl.bfloat16), tl.trans(ht16), INTERPRET)
    dfq = (g_h - d_lc[:, None] * z_i[None, :]) * (inv * (1.0 - alpha))[:, None]
    fq = fq16.to(tl.float32)
    return dalpha, dz, fq * (dfq - tl.sum(dfq * fq, axis=1)[:, None]), psi16


@triton.jit
def head_stats(ROWS, bh64, NQ, BQ: tl.constexpr):
    """Where (batch·head) bh64's row statistics start in ROWS, fp32 [B·H, 2, NQ·BQ] (row_stats): the log2
    normalisers there, Ds NQ·BQ further on."""
    return ROWS + bh64 * 2 * NQ * BQ


@triton.jit
def row_stats(lse2, alpha, d_s, ROWS_BH, rows, NPAD, LINEAR: tl.constexpr):
    """Store what the dk/dv kernel needs of query rows `rows` into their (batch, head)'s row statistics ROWS_BH
    (fp32 [2, NPAD], NPAD = nq·b_q, so rows past N are stored too and no step masks its load): row 0 the log2
    normaliser of α·P, lse·log2(e) − log2(α) (α = 0 gives +inf, so α·P = 0 with no division), row 1 Ds.
    Two contiguous rows per head let the TMA dk/dv kernel fetch a step's values as two tiles."""
    if LINEAR:  # log2 of a clamped α: the interpreter warns at log2(0)
        lse2 = lse2 - tl.where(alpha > 0, tl.log2(tl.maximum(alpha, 1e-30)), float("-inf"))
    tl.store(ROWS_BH + rows, lse2)
    tl.store(ROWS_BH + NPAD + rows, d_s)


@triton.jit
def dq_rows(LSE, O_ROWS, ALPHA_BH, saq, bh64, i_blk, rows, do, N, LINEAR: tl.constexpr):
    """(lse in the log2 domain, 0 past N; α; the centring c = α dO·O) of the dq kernel's query rows; O_ROWS: a
    [rows, D] tile of O, or of O_s for dq_step's DELTA_KNOWN, where c is Δ (zeros past N)."""
    lse2 = tl.load(LSE + bh64 * N + rows, mask=rows < N, other=0.0) * LOG2E
    if LINEAR:
        alpha = tl.load(ALPHA_BH + i_blk * saq)
    else:
        alpha = 1.0
    return lse2, alpha, alpha * tl.sum(do.to(tl.float32) * O_ROWS.to(tl.float32), axis=1)


@triton.jit
def dq_step(q, k, v, do, start, N, lse2, c, alpha, acc, pk, d_s, qk_scale, BK: tl.constexpr, INTERPRET: tl.constexpr,
            DELTA_KNOWN: tl.constexpr):
    """One tile of selected key rows: P recomputed from lse, dP = dO Vᵀ; acc += P ⊙ (α dP − c) K and
    d_s += rowsum(P ⊙ dP), which ends as Ds = dO·O_s exactly (dα's sparse term: the bf16 O_s's rounding, ~10×
    magnified by dα's cancelling sum, stays out of it). DELTA_KNOWN (c is Δ = α dO·O_s, from the O_s the bf16
    forward stored): acc is dS K, three products a step. Otherwise also pk += P K: with Δ = α Ds known only after
    the last block, dS K = P ⊙ (α dP − Δ) K = acc + (c − Δ) pk (dq_finish). c = α dO·O (the bf16 O) differs
    from Δ by α(1 − α) dO·(O_l − O_s) and O's rounding, so acc's terms stay of dS's size and (c − Δ) pk is a
    correction of that size too (centring on c = 0 would round the common part dO·V̄ of every dP into acc).
    The key block at row `start` is masked at N only where it reaches past it (keys_before_n): there a zero key's
    P, from a zero score, could be inf and turn the zeros of its V and K into NaN. Query rows past N are zeros
    (q, dO; lse 0, so c = 0 and P = 1): every term of theirs is 0 except pk's, whose factor c − Δ is 0, and they
    are not stored. The select on every score was a fifth of the loop's instructions."""
    s = keys_before_n(mma(q, tl.trans(k), INTERPRET), start, N, BK)
    p = tl.exp2(s * qk_scale - lse2[:, None])
    dp = mma(do, tl.trans(v), INTERPRET)
    d_s += tl.sum(p * dp, axis=1)
    ds = p * (dp * alpha - c[:, None])
    acc = mma_acc(ds.to(k.dtype), k, acc, INTERPRET)
    if not DELTA_KNOWN:
        pk = mma_acc(p.to(k.dtype), k, pk, INTERPRET)
    return acc, pk, d_s


@triton.jit
def dq_finish(acc, pk, d_s, c, alpha, sm_scale, DELTA_KNOWN: tl.constexpr):
    """The sparse dQ (fp32) from dq_step's sums: acc / √D with DELTA_KNOWN, else (acc + (c − α Ds) pk) / √D."""
    if DELTA_KNOWN:
        return acc * sm_scale
    return (acc + (c - alpha * d_s)[:, None] * pk) * sm_scale


@triton.jit
def dkdv_step(k, v, q, do, k_ok, q_ok, lse2a, d_s, dv_acc, dk_acc, qk_scale, INTERPRET: tl.constexpr):
    """dV += α Pᵀ dO and dK += dSᵀ Q, dS = P ⊙ (α dP − Δ) = αP ⊙ (dO Vᵀ − Ds), for one tile of query rows that
    selected this key block (transposed tiles: key rows along the first axis). lse2a, d_s: the rows' statistics
    (row_stats), so α·P comes out of the exponential and α is never loaded or multiplied in the loop."""
    st = mma(k, tl.trans(q), INTERPRET)  # [BK, rows]
    pt = tl.exp2(st * qk_scale - lse2a[None, :])  # α·Pᵀ
    pt = tl.where(k_ok[:, None] & q_ok[None, :], pt, 0.0)
    dv_acc = mma_acc(pt.to(do.dtype), do, dv_acc, INTERPRET)
    dst = pt * (mma(v, tl.trans(do), INTERPRET) - d_s[None, :])
    return dv_acc, mma_acc(dst.to(q.dtype), q, dk_acc, INTERPRET)


@triton.jit
def dkdv_linear(k, v, k_ok, dh16, dz, sm_scale, INTERPRET: tl.constexpr):
    """Linear-branch (dV_j, dK_j·√D) of key block j from dh_j and dz_j: dV = φK dh, dφK = V dhᵀ + dz, then φ's
    backward (the sparse loop adds to both and dK is scaled by 1/√D at the end)."""
    fk = tl.where(k_ok[:, None], phi_rows(k), 0.0)
    dv_acc = mma(fk.to(tl.bfloat16), dh16, INTERPRET)
    dfk = mma(v.to(tl.bfloat16), tl.trans(dh16), INTERPRET) + dz[None, :]
    return dv_acc, fk * (dfk - tl.sum(dfk * fk, axis=1)[:, None]) / sm_scale


@triton.jit
def dkdv_init(k, v, k_ok, j, start, end, bh64, KV_QBLK, DZ, DZTOT, DHK, NQ, NK_PAD, sm_scale,
              BK: tl.constexpr, D: tl.constexpr, LINEAR: tl.constexpr, INTERPRET: tl.constexpr):
    """(dV_j, dK_j·√D) before the sparse loop: key block j's linear-branch part, from dh_j (one product on the
    host side, run_dkdv) and dz_j = dZ_tot − Σ_{I selecting j} dZ_I over its CSR list [start, end); zeros
    without a linear branch. dh_j is a plain load in both kernel families: it feeds a product and its
    transpose, which Triton 3.6 cannot lower from one TMA tile (its TMA lowering pass fails, sm_90 compile)."""
    if LINEAR:
        offs_d = tl.arange(0, D)
        # dh_j's 32 KB are asked for first, so that they arrive while the list's dz_I are summed
        dh16 = tl.load(DHK + (bh64 * NK_PAD + j) * D * D + offs_d[:, None] * D + offs_d[None, :])
        dz_sel = tl.zeros([D], dtype=tl.float32)
        for t in range(start, end):
            dz_sel += tl.load(DZ + (bh64 * NQ + tl.load(KV_QBLK + t).to(tl.int64)) * D + offs_d)
        dz = tl.load(DZTOT + bh64 * D + offs_d) - dz_sel
        dv_acc, dk_acc = dkdv_linear(k, v, k_ok, dh16, dz, sm_scale, INTERPRET)
    else:
        dv_acc = tl.zeros([BK, D], dtype=tl.float32)
        dk_acc = tl.zeros([BK, D], dtype=tl.float32)
    return dv_acc, dk_acc
