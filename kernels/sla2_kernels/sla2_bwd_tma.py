"""The backward's two sparse kernels with every tile moved by TMA descriptors (as sla2_fwd_tma.py).

Same grids, loops and arithmetic (bwd_math.py) as the pointer kernels of sla2_bwd.py; what changes is
that Q, dO, K and V arrive in shared memory by TMA and feed the tensor cores from there, one selected
block a step with a scalar index. The operand tiles then need no registers of their own, the fp32
accumulators and score tiles have the register file to themselves, and more programs fit on an SM.
α scales dP after the product (dP = α·(dO Vᵀ)) so that dO is used as loaded. Out-of-bounds rows of ragged
blocks come back as zeros; the output stores are clipped at N by the TMA unit.
"""

import triton
import triton.language as tl

from .bwd_math import dkdv_init, dkdv_step, dq_finish, dq_rows, dq_step, head_stats, row_stats
from .dot import register_operand
from .quant_math import LOG2E


@triton.jit
def sla2_bwd_dq_tma_kernel(
    q_desc, k_desc, v_desc, o_desc, do_desc, dq_desc,  # [B, H, N, D] views; blocks [1, 1, BM or BK, D]; o_desc: O,
    # or O_s with DELTA_KNOWN
    LSE, ROWS, IDX, ALPHA,  # ROWS fp32 [B·H, 2, nq·b_q]: the row statistics (bwd_math.row_stats), written here
    sab, sah, saq,
    N, H, NQ, TOPK, sm_scale,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, BM: tl.constexpr,  # BM: query rows per program
    LINEAR: tl.constexpr, INTERPRET: tl.constexpr, DELTA_KNOWN: tl.constexpr,
):
    """Sparse dQ over the selected key blocks (the linear kernel adds the linear dQ later) and the rows' statistics
    (log2 normaliser of α·P, Ds = dO·O_s)."""
    pid_m = tl.program_id(0) // (BQ // BM)  # the query block
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    bh64 = bh.to(tl.int64)
    row0 = pid_m * BQ + (tl.program_id(0) % (BQ // BM)) * BM
    alpha_bh = ALPHA + b.to(tl.int64) * sab + h.to(tl.int64) * sah
    q = q_desc.load([b, h, row0, 0]).reshape(BM, D)
    do = do_desc.load([b, h, row0, 0]).reshape(BM, D)
    lse2, alpha, c = dq_rows(LSE, o_desc.load([b, h, row0, 0]).reshape(BM, D), alpha_bh, saq, bh64, pid_m,
                             row0 + tl.arange(0, BM), do, N, LINEAR)
    idx_base = IDX + (bh64 * NQ + pid_m) * TOPK
    qk_scale = sm_scale * LOG2E
    acc = tl.zeros([BM, D], dtype=tl.float32)
    pk = tl.zeros([BM, D], dtype=tl.float32)
    d_s = tl.zeros([BM], dtype=tl.float32)
    for it in range(0, TOPK):
        start = tl.load(idx_base + it) * BK
        k = k_desc.load([b, h, start, 0]).reshape(BK, D)
        v = v_desc.load([b, h, start, 0]).reshape(BK, D)
        acc, pk, d_s = dq_step(q, k, v, do, start, N, lse2, c, alpha, acc, pk, d_s, qk_scale, BK, INTERPRET,
                               DELTA_KNOWN)
    dq = dq_finish(acc, pk, d_s, c, alpha, sm_scale, DELTA_KNOWN)
    dq_desc.store([b, h, row0, 0], dq.to(dq_desc.dtype).reshape(1, 1, BM, D))
    row_stats(lse2, alpha, d_s, head_stats(ROWS, bh64, NQ, BQ), row0 + tl.arange(0, BM), NQ * BQ, LINEAR)


@triton.jit
def sla2_bwd_dkdv_tma_kernel(
    q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc,  # [B, H, N, D] views; blocks [1, 1, QS or BK, D]
    rows_desc,  # the dq kernel's row statistics, fp32 [B·H, 2, nq·b_q] (bwd_math.row_stats); blocks [1, 1, QS]
    KV_PTR, KV_QBLK, KV_ORDER,
    DHK, DZ, DZTOT, NK_PAD,  # DHK bf16 [BH, NK_PAD, D, D]: dh_j = Σ_{I not selecting j} dH_I
    N, H, NQ, NK, sm_scale,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, QS: tl.constexpr, LINEAR: tl.constexpr,
    INTERPRET: tl.constexpr,
    REGISTER_KV: tl.constexpr,  # BwdConfig.dkdv_register_kv: K, V as the score products' register operand
):
    """dK, dV of one key block: linear part from dh_j, dz_j; sparse part over the query blocks that selected
    it (CSR list, QS query rows a step)."""
    flat = tl.load(KV_ORDER + tl.program_id(0))  # bh·NK + j, in selection.launch_order's order
    bh = flat // NK
    j = flat % NK
    b = bh // H
    h = bh % H
    bh64 = bh.to(tl.int64)
    start = tl.load(KV_PTR + flat)  # the CSR list is indexed by the same flat id
    end = tl.load(KV_PTR + flat + 1)
    row_k = j * BK
    offs_n = row_k + tl.arange(0, BK)
    k_ok = offs_n < N
    k = k_desc.load([b, h, row_k, 0]).reshape(BK, D)
    v = v_desc.load([b, h, row_k, 0]).reshape(BK, D)
    if REGISTER_KV:
        k = register_operand(k, INTERPRET)
        v = register_operand(v, INTERPRET)
    dv_acc, dk_acc = dkdv_init(k, v, k_ok, j, start, end, bh64, KV_QBLK, DZ, DZTOT, DHK, NQ, NK_PAD, sm_scale,
                               BK, D, LINEAR, INTERPRET)

    qk_scale = sm_scale * LOG2E
    NSUBQ: tl.constexpr = BQ // QS
    offs_qs = tl.arange(0, QS)
    for u in range(start * NSUBQ, end * NSUBQ):
        r0 = tl.load(KV_QBLK + u // NSUBQ) * BQ + (u % NSUBQ) * QS
        q = q_desc.load([b, h, r0, 0]).reshape(QS, D)
        do = do_desc.load([b, h, r0, 0]).reshape(QS, D)
        # a step's statistics as two 128-byte TMA tiles: as pointer loads they took 16 four-byte cp.async a thread
        # (the accumulator layout's columns), about a tenth of the loop's issue samples (Nsight Compute, 1.3B)
        lse2a = rows_desc.load([bh, 0, r0]).reshape(QS)
        d_s = rows_desc.load([bh, 1, r0]).reshape(QS)
        dv_acc, dk_acc = dkdv_step(k, v, q, do, k_ok, r0 + offs_qs < N, lse2a, d_s, dv_acc, dk_acc, qk_scale,
                                   INTERPRET)
    dk_desc.store([b, h, row_k, 0], (dk_acc * sm_scale).to(dk_desc.dtype).reshape(1, 1, BK, D))
    dv_desc.store([b, h, row_k, 0], dv_acc.to(dv_desc.dtype).reshape(1, 1, BK, D))
