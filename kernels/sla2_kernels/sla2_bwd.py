"""SLA2 backward kernels (docs/method.md, Backward): sparse-branch FlashAttention backward over the selected
blocks, linear-branch gradients by totals minus selected, dα, and the chain rule through φ = softmax over
head_dim. The host side (buffers, launch order, the dh product) is backward.py; the TMA twins of the dq and
dk/dv kernels are sla2_bwd_tma.py.

Notation per (batch·head), query block I (b_q rows), key block j (b_k rows), α = α_I (effective: 1 when every
key block is selected), forward O = α O_s + (1 − α) O_l and its lse (sparse branch, natural log). Nothing
divides by α (α → 0 is reachable through the sigmoid):
  Ds_i = dO_i·O_s,i = rowsum(P ⊙ dO Vᵀ)_i      (summed in the dq kernel's loop; O_s is never formed)
  Dl_i = dO_i·O_l,i                             (O_l recomputed)
  Δ_i  = rowsum(dO_s ⊙ O_s) = α Ds_i            (dO_s = α dO)
  dα_I = Σ_{i∈I} dO_i·(O_s,i − O_l,i) = Σ_{i∈I} (Ds_i − Dl_i)
  QAT (the low-bit forward, straight-through for Q, K, V): P, Ds and Δ as above at the forward's lse, but α
  mixed the low-bit O_s^q in, so dα_I = Σ_{i∈I} (dO_i·O_s^q_i − Dl_i) from the O_s^q the forward stored.
Sparse branch (P = exp(S/√D − lse) on selected blocks): dP = α dO Vᵀ, dS = P ⊙ (dP − Δ),
  dQ += dS K/√D, dK += dSᵀ Q/√D, dV += α Pᵀ dO.
  Where the bf16 forward stored O_s, Δ = α dO·O_s is known before the dq loop, which sums dS K and Ds (three
  products a step; Ds for dα stays the loop's exact sum). Otherwise (O_s not kept; QAT, whose O_s^q is not P V)
  Δ is known only after the dq loop, so the loop sums P ⊙ (α dO Vᵀ − c) K, P K and Ds for a centring
  c = α dO·O (bf16 O: close to Δ), and dS K = that sum + (c − Δ) P K (bwd_math.dq_step). The dk/dv kernel runs
  later and forms α·P = exp2(S·log2(e)/√D − (lse·log2(e) − log2 α)) and dS = αP ⊙ (dO Vᵀ − Ds) from the dq
  kernel's row statistics (bwd_math.row_stats): α itself never enters its loop.
Linear branch (g = (1 − α) dO, φQ, ψ = φQ / den, H_I, Z_I = sums over the blocks I did not select; H_I summed in
fp32 and centred to H̃_I = H_I − Z_I v̄ᵀ before its bf16 rounding, bwd_math.centred_state):
  dφQ_i = (g_i H_Iᵀ − (1 − α) Dl_i Z_I) / den_i = (g_i H̃_Iᵀ − (g_i·Õ_l,i) Z_I) / den_i
  dH_I  = ψ_Iᵀ g_I,   dZ_I = −Σ_i (1 − α) Dl_i ψ_i
  key block j: dh_j = Σ_{I not selecting j} dH_I,  dz_j = dZ_tot − Σ_{I selecting j} dZ_I
  dV_j += φK_j dh_j,  dφK_j = V_j dh_jᵀ + dz_j
  φ backward: dx = φ ⊙ (dφ − rowsum(dφ ⊙ φ)).

Kernels (launch order):
  1. dq kernel, one program per (query block or BM rows of it, batch·head): FlashAttention's dQ over the
     selected key blocks (into dQ) and the row statistics (log2 normaliser of α·P, Ds);
     linear kernel (with a linear branch), one program per (query block, batch·head): reads backward_state's
     H_I, Z_I and Ds (QAT: O_s^q instead), writes dα_I, dH_I, dZ_I and adds the linear dQ to dQ. Without a
     linear branch dα = 0.
  2. dh_j = Σ_{I not selecting j} dH_I for every key block at once: the transposed complement mask (bf16,
     [nq, nk] per head, the router scores' shape) times dH on the tensor cores; dZ_tot = Σ_I dZ_I.
  3. dk/dv kernel, one program per (key block, batch·head), walking the CSR list of the query blocks that
     selected that key block (built on the GPU from the complement mask of step 2, no N×nk tensor):
     dz_j = dZ_tot − the list's dZ_I, the linear part from dh_j; then the sparse dK/dV.
     Order (selection.launch_order): key blocks selected far more often than the mean (tuning.LONG_LIST_FACTOR)
     first, across heads, so that none starts late and runs on alone; then head by head (heads adjacent so
     that their Q, dO stay in L2), longest list first within a head.

Memory besides the gradients: the row statistics [B·H, 2, nq·b_q] fp32, ψ [B·H, nq·b_q, D] bf16 during the
linear kernel only, H_I [B·H, nq, D, D] fp32 and Z_I (backward_state.py) until the linear kernel has run, dH
[B, H, nq, D, D] and dh [B, H, nk, D, D] (bf16), dZ [B, H, nq, D] fp32, the CSR list (B·H·nq·topk int32), the
complement mask (B·H·nq·nk bf16, as the router's scores; also what the CSR lists are built from):
O(N·D²/b_k + N²/(b_q·b_k)), never O(N²·D) or O(N·N/b_k).
"""

import triton
import triton.language as tl

from .bwd_math import (centred_state, dkdv_init, dkdv_step, dq_finish, dq_rows, dq_step, head_stats, linear_rows,
                       mixed_sparse_rows, row_stats)
from .dot import mma_acc
from .quant_math import LOG2E
from .sla2_fwd import load_linear_state


@triton.jit
def sla2_bwd_dq_kernel(
    Q, K, V, O, DO, DQ,
    LSE, ROWS, IDX, ALPHA,  # ROWS fp32 [B·H, 2, nq·b_q]: the row statistics (bwd_math.row_stats), written here
    sqb, sqh, sqn,
    skb, skh, skn,
    svb, svh, svn,
    sob, soh, son,
    sdob, sdoh, sdon,
    sdqb, sdqh, sdqn,
    sab, sah, saq,
    N, H, NQ, TOPK, sm_scale,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr,
    LINEAR: tl.constexpr, INTERPRET: tl.constexpr, BM: tl.constexpr,  # BM: query rows per program (divides BQ)
    DELTA_KNOWN: tl.constexpr,  # O holds the bf16 forward's O_s: Δ = α dO·O_s before the loop (bwd_math.dq_step)
):
    """FlashAttention's dQ over the selected key blocks, written to DQ (the linear kernel adds the linear dQ), and
    the rows' statistics for the linear and dk/dv kernels, written to ROWS. dQ rows are independent, so a query
    block may be split over BQ // BM programs (BwdConfig.dq_rows)."""
    pid_m = tl.program_id(0) // (BQ // BM)  # the query block
    bh = tl.program_id(1)
    b64 = (bh // H).to(tl.int64)
    h64 = (bh % H).to(tl.int64)
    bh64 = bh.to(tl.int64)

    offs_m = pid_m * BQ + (tl.program_id(0) % (BQ // BM)) * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    row_ok = (offs_m < N)[:, None]
    do = tl.load(DO + b64 * sdob + h64 * sdoh + offs_m[:, None] * sdon + offs_d[None, :], mask=row_ok, other=0.0)
    o = tl.load(O + b64 * sob + h64 * soh + offs_m[:, None] * son + offs_d[None, :], mask=row_ok, other=0.0)
    lse2, alpha, c = dq_rows(LSE, o, ALPHA + b64 * sab + h64 * sah, saq, bh64, pid_m, offs_m, do, N, LINEAR)
    k_base = K + b64 * skb + h64 * skh
    v_base = V + b64 * svb + h64 * svh
    idx_base = IDX + (bh64 * NQ + pid_m) * TOPK
    acc = tl.zeros([BM, D], dtype=tl.float32)
    pk = tl.zeros([BM, D], dtype=tl.float32)
    d_s = tl.zeros([BM], dtype=tl.float32)

    # Sparse dQ over the selected blocks, one a step, indexed by a scalar (dq_step's edge mask needs it). Two
    # blocks a step or half-block steps measured slower on the H100 (1.30–1.48 vs 1.24 ms, Wan-1.3B at 97%) and
    # were removed.
    qk_scale = sm_scale * LOG2E
    q = tl.load(Q + b64 * sqb + h64 * sqh + offs_m[:, None] * sqn + offs_d[None, :], mask=row_ok, other=0.0)
    offs_b = tl.arange(0, BK)
    for it in range(0, TOPK):
        start = tl.load(idx_base + it) * BK
        rows = start + offs_b
        kv_ok = rows < N
        k = tl.load(k_base + rows[:, None] * skn + offs_d[None, :], mask=kv_ok[:, None], other=0.0)
        v = tl.load(v_base + rows[:, None] * svn + offs_d[None, :], mask=kv_ok[:, None], other=0.0)
        acc, pk, d_s = dq_step(q, k, v, do, start, N, lse2, c, alpha, acc, pk, d_s, qk_scale, BK, INTERPRET,
                               DELTA_KNOWN)
    dq = dq_finish(acc, pk, d_s, c, alpha, sm_scale, DELTA_KNOWN)
    tl.store(DQ + b64 * sdqb + h64 * sdqh + offs_m[:, None] * sdqn + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok)
    row_stats(lse2, alpha, d_s, head_stats(ROWS, bh64, NQ, BQ), offs_m, NQ * BQ, LINEAR)


@triton.jit
def sla2_bwd_linear_kernel(
    Q, DO, DQ, OS,  # OS: the low-bit forward's O_s^q (read only with DALPHA_FROM_OS)
    ROWS, ALPHA, HI, ZI,  # ROWS: the dq kernel's row statistics, of which Ds
    DH, DZ, DALPHA,
    PSI,  # bf16 [B·H, nq·b_q, D] scratch: ψ from pass 1 to pass 2
    sqb, sqh, sqn,
    sdob, sdoh, sdon,
    sdqb, sdqh, sdqn,
    sosb, sosh, sosn,
    sab, sah, saq,
    N, H, NQ,
    BQ: tl.constexpr, D: tl.constexpr, RS: tl.constexpr, DC: tl.constexpr,  # RS rows a step; DC columns of dH_I
    DALPHA_FROM_OS: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Per query block, after the dq kernel: dα_I = Σ_i (dO_i·O_s,i − Dl_i) (dO·O_s: the dq kernel's Ds, or from
    the stored O_s^q with DALPHA_FROM_OS, bwd_math.mixed_sparse_rows), dH_I, dZ_I and the linear dQ, added to the
    sparse dQ in DQ. A kernel of its own: fused into the dq kernel, this straight-line part pushed the sparse loop
    to 255 registers and 1.2 KB of spills a thread (sm_90 compile; 193 registers, none, without it). Two passes
    over the block's rows, RS rows a step: the per-row work (pass 1, which stores ψ to PSI), then dH_I = (1 − α) ψᵀ
    dO, DC columns at a time (pass 2), so that dH_I's fp32 accumulator never shares the registers with pass 1's
    tiles (the whole block at once: 255 registers, 60 spilled, one program an SM, 0.553 ms at Wan-1.3B, 97%; these
    passes 0.443 ms, H100, 2026-11-27; ψ recomputed from Q in pass 2 instead of stored: 0.553 again, its exps and
    row reductions twice more)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b64 = (bh // H).to(tl.int64)
    h64 = (bh % H).to(tl.int64)
    bh64 = bh.to(tl.int64)
    offs_d = tl.arange(0, D)
    q_bh = Q + b64 * sqb + h64 * sqh
    do_bh = DO + b64 * sdob + h64 * sdoh
    dq_bh = DQ + b64 * sdqb + h64 * sdqh
    os_bh = OS + b64 * sosb + h64 * sosh
    alpha = tl.load(ALPHA + b64 * sab + h64 * sah + pid_m * saq)
    h32, z_i = load_linear_state(HI, ZI, bh64, pid_m, NQ, D)  # fp32 H_I (backward_state.py), Z_I
    ht16, vbar = centred_state(h32, z_i)
    dz_acc = tl.zeros([D], dtype=tl.float32)
    dalpha = 0.0
    for r in range(0, BQ, RS):
        offs_m = pid_m * BQ + r + tl.arange(0, RS)
        q_ok = offs_m < N
        do = tl.load(do_bh + offs_m[:, None] * sdon + offs_d[None, :], mask=q_ok[:, None], other=0.0)
        q = tl.load(q_bh + offs_m[:, None] * sqn + offs_d[None, :], mask=q_ok[:, None], other=0.0)
        d_s = mixed_sparse_rows(do, head_stats(ROWS, bh64, NQ, BQ) + NQ * BQ + offs_m,
                                os_bh + offs_m[:, None] * sosn + offs_d[None, :], q_ok, DALPHA_FROM_OS)
        da, dz, dq_lin, psi16 = linear_rows(do, d_s, q, q_ok, ht16, vbar, z_i, alpha, INTERPRET)
        dalpha += da
        dz_acc += dz
        tl.store(PSI + (bh64 * NQ * BQ + offs_m[:, None]) * D + offs_d[None, :], psi16)
        dq_ptrs = dq_bh + offs_m[:, None] * sdqn + offs_d[None, :]
        dq = tl.load(dq_ptrs, mask=q_ok[:, None], other=0.0).to(tl.float32) + dq_lin
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=q_ok[:, None])
    tl.store(DZ + (bh64 * NQ + pid_m) * D + offs_d, dz_acc)
    tl.store(DALPHA + bh64 * NQ + pid_m, dalpha)
    tl.debug_barrier()  # pass 1's ψ rows, stored by other threads of this program
    for c in range(0, D, DC):
        offs_c = c + tl.arange(0, DC)
        dh_acc = tl.zeros([D, DC], dtype=tl.float32)
        for r in range(0, BQ, RS):
            offs_m = pid_m * BQ + r + tl.arange(0, RS)
            psi16 = tl.load(PSI + (bh64 * NQ * BQ + offs_m[:, None]) * D + offs_d[None, :])
            do_c = tl.load(do_bh + offs_m[:, None] * sdon + offs_c[None, :], mask=(offs_m < N)[:, None],
                           other=0.0)
            dh_acc = mma_acc(tl.trans(psi16), do_c.to(tl.bfloat16), dh_acc, INTERPRET)
        tl.store(DH + (bh64 * NQ + pid_m) * D * D + offs_d[:, None] * D + offs_c[None, :],
                 (dh_acc * (1.0 - alpha)).to(DH.dtype.element_ty))


@triton.jit
def sla2_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV,
    ROWS,  # the dq kernel's row statistics (bwd_math.row_stats)
    KV_PTR, KV_QBLK, KV_ORDER,
    DHK, DZ, DZTOT, NK_PAD,  # DHK bf16 [BH, NK_PAD, D, D]: dh_j = Σ_{I not selecting j} dH_I
    sqb, sqh, sqn,
    skb, skh, skn,
    svb, svh, svn,
    sdob, sdoh, sdon,
    sdkb, sdkh, sdkn,
    sdvb, sdvh, sdvn,
    N, H, NQ, NK, sm_scale,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, QS: tl.constexpr, LINEAR: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    flat = tl.load(KV_ORDER + tl.program_id(0))  # bh·NK + j, in selection.launch_order's order
    bh = flat // NK
    j = flat % NK
    b64 = (bh // H).to(tl.int64)
    h64 = (bh % H).to(tl.int64)
    bh64 = bh.to(tl.int64)
    start = tl.load(KV_PTR + flat)  # the CSR list is indexed by the same flat id
    end = tl.load(KV_PTR + flat + 1)

    offs_n = j * BK + tl.arange(0, BK)
    offs_d = tl.arange(0, D)
    k_ok = offs_n < N
    k = tl.load(K + b64 * skb + h64 * skh + offs_n[:, None] * skn + offs_d[None, :], mask=k_ok[:, None], other=0.0)
    v = tl.load(V + b64 * svb + h64 * svh + offs_n[:, None] * svn + offs_d[None, :], mask=k_ok[:, None], other=0.0)

    dv_acc, dk_acc = dkdv_init(k, v, k_ok, j, start, end, bh64, KV_QBLK, DZ, DZTOT, DHK, NQ, NK_PAD, sm_scale,
                               BK, D, LINEAR, INTERPRET)

    # Loop B: sparse dK, dV over the query blocks that selected this key block, QS query rows at a time (QS ≤ b_q:
    # narrower S/P/dP tiles next to the two fp32 accumulators).
    qk_scale = sm_scale * LOG2E
    rows_bh = head_stats(ROWS, bh64, NQ, BQ)
    NSUBQ: tl.constexpr = BQ // QS
    offs_qs = tl.arange(0, QS)
    for u in range(start * NSUBQ, end * NSUBQ):
        rows = tl.load(KV_QBLK + u // NSUBQ) * BQ + (u % NSUBQ) * QS + offs_qs
        q_ok = rows < N
        lse2a = tl.load(rows_bh + rows)
        d_s = tl.load(rows_bh + NQ * BQ + rows)
        q = tl.load(Q + b64 * sqb + h64 * sqh + rows[:, None] * sqn + offs_d[None, :], mask=q_ok[:, None], other=0.0)
        do = tl.load(DO + b64 * sdob + h64 * sdoh + rows[:, None] * sdon + offs_d[None, :],
                     mask=q_ok[:, None], other=0.0)
        dv_acc, dk_acc = dkdv_step(k, v, q, do, k_ok, q_ok, lse2a, d_s, dv_acc, dk_acc, qk_scale, INTERPRET)
    tl.store(DK + b64 * sdkb + h64 * sdkh + offs_n[:, None] * sdkn + offs_d[None, :],
             (dk_acc * sm_scale).to(DK.dtype.element_ty), mask=k_ok[:, None])
    tl.store(DV + b64 * sdvb + h64 * sdvh + offs_n[:, None] * sdvn + offs_d[None, :],
             dv_acc.to(DV.dtype.element_ty), mask=k_ok[:, None])
