"""The backward's per-tile arithmetic, shared by the pointer kernels (sla2_bwd.py) and the TMA kernels
(sla2_bwd_tma.py): they differ only in how tiles reach the program. Notation as in sla2_bwd.py."""

import triton
import triton.language as tl

from .dot import mma, mma_acc
from .quant_math import LOG2E


@triton.jit
def _phi_rows(x):
    """Softmax over the last axis (head_dim) in fp32."""
    xf = x.to(tl.float32)
    e = tl.exp(xf - tl.max(xf, axis=1)[:, None])
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def phi_inv(q, q_ok, z_i):
    """(bf16 φQ, 1/den) of a tile of query rows, den = φQ·Z_I in fp32 (0 on padding), as the pointer forward's
    epilogue (sla2_fwd.linear_output) forms them."""
    fq16 = _phi_rows(q).to(tl.bfloat16)
    den = tl.sum(fq16.to(tl.float32) * z_i[None, :], axis=1)
    return fq16, tl.where(q_ok & (den > 0), 1.0 / den, 0.0)


@triton.jit
def prologue_linear_rows(do, d_o, q, q_ok, h16, z_i, alpha, INTERPRET: tl.constexpr):
    """The backward prologue for a tile of query rows with a linear branch: (Δ, Σ_rows (Do − Dl), this tile's part
    of dZ_I, the linear dQ, bf16 ψ = φQ / den for dH_I = (1 − α) ψᵀ dO). O_l is recomputed as the pointer
    forward's epilogue forms it (bf16 φQ and H_I on the tensor cores, fp32 denominator); the TMA forward rounds
    the unnormalised exp(Q − rowmax) to bf16 instead (its normaliser cancels), so against the default forward the
    recomputed O_l differs by bf16 rounding, inside the gradient tests' tolerance. Do = dO·O is given."""
    fq16, inv = phi_inv(q, q_ok, z_i)
    d_l = tl.sum(do.to(tl.float32) * (mma(fq16, h16, INTERPRET) * inv[:, None]), axis=1)  # Dl = dO·O_l
    delta = d_o - (1.0 - alpha) * d_l
    dalpha = tl.sum(tl.where(q_ok, d_o - d_l, 0.0), axis=0)
    # dZ_I = −Σ_i w_i ψ_i with ψ = φQ / den (bf16, as in dH_I), w = (1 − α) Dl; padding rows have inv = 0.
    w = (1.0 - alpha) * d_l
    psi16 = (fq16.to(tl.float32) * inv[:, None]).to(tl.bfloat16)
    dz = -tl.sum(psi16.to(tl.float32) * w[:, None], axis=0)
    # dφQ = (g H_Iᵀ − (1 − α) Dl Z_I) / den with g = (1 − α) dO; then through φ.
    g_h = mma(do.to(tl.bfloat16), tl.trans(h16), INTERPRET) * (1.0 - alpha)
    dfq = (g_h - w[:, None] * z_i[None, :]) * inv[:, None]
    fq = fq16.to(tl.float32)
    return delta, dalpha, dz, fq * (dfq - tl.sum(dfq * fq, axis=1)[:, None]), psi16


@triton.jit
def query_rows(LSE, DELTA, ALPHA_BH, saq, bh64, i_blk, rows, N, LINEAR: tl.constexpr):
    """(q_ok, lse in the log2 domain, Δ, α) of query rows `rows` (of query block i_blk; ALPHA_BH points at this
    (batch, head)'s α row). Without a linear branch α is 1 (effective_alpha)."""
    q_ok = rows < N
    lse2 = tl.load(LSE + bh64 * N + rows, mask=q_ok, other=0.0) * LOG2E
    delta = tl.load(DELTA + bh64 * N + rows, mask=q_ok, other=0.0)
    if LINEAR:
        alpha = tl.load(ALPHA_BH + i_blk * saq)
    else:
        alpha = 1.0
    return q_ok, lse2, delta, alpha


@triton.jit
def dq_step(q, k, v, do, kv_ok, q_ok, lse2, delta, alpha, acc, qk_scale, INTERPRET: tl.constexpr):
    """acc += dS K for one tile of selected key rows: P recomputed from lse, dP = α dO Vᵀ, dS = P (dP − Δ)."""
    s = mma(q, tl.trans(k), INTERPRET)
    p = tl.exp2(s * qk_scale - lse2[:, None])
    p = tl.where(kv_ok[None, :] & q_ok[:, None], p, 0.0)
    dp = mma(do, tl.trans(v), INTERPRET) * alpha
    ds = p * (dp - delta[:, None])
    return mma_acc(ds.to(k.dtype), k, acc, INTERPRET)


@triton.jit
def dkdv_step(k, v, q, do, k_ok, q_ok, lse2, delta, alpha, dv_acc, dk_acc, qk_scale, INTERPRET: tl.constexpr):
    """dV += α Pᵀ dO and dK += dSᵀ Q for one tile of query rows that selected this key block (transposed
    tiles: key rows along the first axis)."""
    st = mma(k, tl.trans(q), INTERPRET)  # [BK, rows]
    pt = tl.exp2(st * qk_scale - lse2[None, :])
    pt = tl.where(k_ok[:, None] & q_ok[None, :], pt, 0.0)
    dv_acc = mma_acc((pt * alpha).to(do.dtype), do, dv_acc, INTERPRET)
    dpt = mma(v, tl.trans(do), INTERPRET) * alpha
    dst = pt * (dpt - delta[None, :])
    return dv_acc, mma_acc(dst.to(q.dtype), q, dk_acc, INTERPRET)


@triton.jit
def dkdv_linear(k, v, k_ok, dh16, dz, sm_scale, INTERPRET: tl.constexpr):
    """Linear-branch (dV_j, dK_j·√D) of key block j from dh_j and dz_j: dV = φK dh, dφK = V dhᵀ + dz, then φ's
    backward (the sparse loop adds to both and dK is scaled by 1/√D at the end)."""
    fk = tl.where(k_ok[:, None], _phi_rows(k), 0.0)
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
        dz_sel = tl.zeros([D], dtype=tl.float32)
        for t in range(start, end):
            dz_sel += tl.load(DZ + (bh64 * NQ + tl.load(KV_QBLK + t).to(tl.int64)) * D + offs_d)
        dh16 = tl.load(DHK + (bh64 * NK_PAD + j) * D * D + offs_d[:, None] * D + offs_d[None, :])
        dz = tl.load(DZTOT + bh64 * D + offs_d) - dz_sel
        dv_acc, dk_acc = dkdv_linear(k, v, k_ok, dh16, dz, sm_scale, INTERPRET)
    else:
        dv_acc = tl.zeros([BK, D], dtype=tl.float32)
        dk_acc = tl.zeros([BK, D], dtype=tl.float32)
    return dv_acc, dk_acc
