"""The dq kernel written in Gluon, Triton's explicit-layout dialect: the same contract, grid and arithmetic as
sla2_bwd_tma.sla2_bwd_dq_tma_kernel (bwd_math.dq_rows, dq_step, dq_finish, row_stats), with the K, V pipeline
placed by hand.

Why by hand: Triton's software pipeliner at two stages issues the next key block's TMA loads at the end of an
iteration, after its last product, although their buffer is free as soon as the iteration's score products have
been waited for; the load's whole latency then falls on the next iteration's first wait (Nsight Compute, Wan-1.3B:
a fifth of the dq kernel's samples wait there, docs/results.md "Where the sparse loops wait"). Here each load is
issued right after that wait, a softmax and two products ahead of its use, with explicit mbarriers.

One warp group (4 warps) a program of GLUON_DQ_ROWS query rows. Shared memory: Q, dO and O (O's buffer takes dQ
at the end) and two stages of K and V, 112 KB at D 128, b_k 64: two programs an SM. Products are Hopper wgmma:
S = Q Kᵀ and dP = dO Vᵀ with both operands in shared memory; dS K and P K with dS, P from registers. Two loops
(OVERLAP, BwdConfig.dq_gluon_overlap, on by default): a step waits for both score products before its exponentials,
or (overlapped) for S alone, so that P's exponentials run while dO Vᵀ is still on the tensor cores.

Host side: backward.run_dq_sparse, where backward.gluon_dq_suits allows it.
"""

from __future__ import annotations

from .bwd_math import head_stats, row_stats
from .constants import LOG2E
from .gluon_tiles import AVAILABLE, WARPS

# 64 query rows a program: one warp group, 16 rows a warp
GLUON_DQ_WARPS = WARPS
GLUON_DQ_ROWS = 16 * WARPS
KV_STAGES = 2

if AVAILABLE:
    from .gluon_tiles import (
        fence_async_shared,
        gl,
        gluon,
        keys_before_n,
        load_kv,
        mbarrier,
        tiles_2d,
        tma,
        tma_load,
        tma_store,
        thread_barrier,
        warpgroup_mma,
        warpgroup_mma_init,
        warpgroup_mma_wait,
    )

    # module-level values a Gluon function reads must be constexpr
    _LOG2E = gl.constexpr(LOG2E)
    _WARPS = gl.constexpr(GLUON_DQ_WARPS)
    _STAGES = gl.constexpr(KV_STAGES)

    @gluon.jit
    def _refill(it, idx_base, TOPK, k_desc, v_desc, b, h, bar_kv, k_bufs, v_bufs, BK: gl.constexpr):
        """Step it + 1's K, V into the stage step it − 1 used, once that step's products are complete (steps 0
        and 1 were issued before the loop)."""
        if (it >= 1) & (it + 1 < TOPK):
            nxt = (it + 1) % _STAGES
            load_kv(k_desc, v_desc, b, h, gl.load(idx_base + it + 1) * BK, bar_kv.index(nxt), k_bufs.index(nxt),
                    v_bufs.index(nxt))

    @gluon.jit
    def sla2_bwd_dq_gluon_kernel(
        q_desc, k_desc, v_desc, o_desc, do_desc, dq_desc,  # Gluon descriptors of [B, H, N, D] views; blocks
        # [1, 1, BM or BK, D]; o_desc: O, or O_s with DELTA_KNOWN
        LSE, ROWS, IDX, ALPHA,  # ROWS fp32 [B·H, 2, nq·b_q]: the row statistics (bwd_math.row_stats), written here
        sab, sah, saq,
        N, H, NQ, TOPK, sm_scale,
        BQ: gl.constexpr, BK: gl.constexpr, D: gl.constexpr, BM: gl.constexpr,  # BM: query rows per program
        LINEAR: gl.constexpr, DELTA_KNOWN: gl.constexpr,
        OVERLAP: gl.constexpr,  # BwdConfig.dq_gluon_overlap: P's exponentials while dO Vᵀ runs
    ):
        """Sparse dQ over the selected key blocks (the linear kernel adds the linear dQ later) and the rows'
        statistics (log2 normaliser of α·P, Ds = dO·O_s)."""
        gl.static_assert(BM == 16 * _WARPS, "one warp group: 16 query rows a warp")
        dtype: gl.constexpr = q_desc.dtype
        # wgmma accumulators: scores [BM, BK] and dQ [BM, D]; dS and P enter dS K, P K from registers.
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[_WARPS, 1],
                                                           instr_shape=[16, BK, 16])
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[_WARPS, 1],
                                                             instr_shape=[16, D, 16])
        op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)

        pid_m = gl.program_id(0) // (BQ // BM)  # the query block
        bh = gl.program_id(1)
        b = bh // H
        h = bh % H
        bh64 = bh.to(gl.int64)
        row0 = pid_m * BQ + (gl.program_id(0) % (BQ // BM)) * BM
        idx_base = IDX + (bh64 * NQ + pid_m) * TOPK

        q_buf = gl.allocate_shared_memory(dtype, [1, 1, BM, D], q_desc.layout)
        do_buf = gl.allocate_shared_memory(dtype, [1, 1, BM, D], do_desc.layout)
        o_buf = gl.allocate_shared_memory(dtype, [1, 1, BM, D], o_desc.layout)  # then dQ's staging for its store
        k_bufs = gl.allocate_shared_memory(dtype, [_STAGES, 1, 1, BK, D], k_desc.layout)
        v_bufs = gl.allocate_shared_memory(dtype, [_STAGES, 1, 1, BK, D], v_desc.layout)
        bar_q = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        bar_kv = gl.allocate_shared_memory(gl.int64, [_STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(bar_q, count=1)
        for st in gl.static_range(_STAGES):
            mbarrier.init(bar_kv.index(st), count=1)
        fence_async_shared()

        # The query tiles and the first two key blocks are in flight together.
        mbarrier.expect(bar_q, 3 * q_desc.block_type.nbytes)
        tma_load(q_desc, [b, h, row0, 0], bar_q, q_buf)
        tma_load(do_desc, [b, h, row0, 0], bar_q, do_buf)
        tma_load(o_desc, [b, h, row0, 0], bar_q, o_buf)
        for st in gl.static_range(_STAGES):
            if st < TOPK:
                load_kv(k_desc, v_desc, b, h, gl.load(idx_base + st) * BK, bar_kv.index(st), k_bufs.index(st),
                         v_bufs.index(st))

        # The rows' statistics (bwd_math.dq_rows): log2-domain lse (0 past N), α, c = α dO·O (Δ with DELTA_KNOWN).
        rows = row0 + gl.arange(0, BM, layout=row_layout)
        lse2 = gl.load(LSE + bh64 * N + rows, mask=rows < N, other=0.0) * _LOG2E
        if LINEAR:
            alpha = gl.load(ALPHA + b.to(gl.int64) * sab + h.to(gl.int64) * sah + pid_m * saq)
        else:
            alpha = 1.0
        mbarrier.wait(bar_q, 0)
        q = tiles_2d(q_buf, BM, D)
        do = tiles_2d(do_buf, BM, D)
        o_do = gl.sum(do.load(acc_layout).to(gl.float32) * tiles_2d(o_buf, BM, D).load(acc_layout).to(gl.float32),
                      axis=1)
        c = gl.convert_layout(o_do, row_layout) * alpha

        qk_scale = sm_scale * _LOG2E
        zero_s = gl.zeros([BM, BK], dtype=gl.float32, layout=s_layout)
        # dS K and P K stay in flight across steps: their accumulators are carried as wgmma tokens
        acc = warpgroup_mma_init(gl.zeros([BM, D], dtype=gl.float32, layout=acc_layout))
        pk = gl.zeros([BM, D], dtype=gl.float32, layout=acc_layout)
        if not DELTA_KNOWN:
            pk = warpgroup_mma_init(pk)
        d_s = gl.zeros([BM], dtype=gl.float32, layout=row_layout)
        for it in range(0, TOPK):
            stage = it % _STAGES
            start = gl.load(idx_base + it) * BK
            mbarrier.wait(bar_kv.index(stage), (it // _STAGES) & 1)
            k = tiles_2d(k_bufs.index(stage), BK, D)
            v = tiles_2d(v_bufs.index(stage), BK, D)
            s_tok = warpgroup_mma(q, k.permute((1, 0)), zero_s, use_acc=False, is_async=True)
            dp_tok = warpgroup_mma(do, v.permute((1, 0)), zero_s, use_acc=False, is_async=True)
            if OVERLAP:
                # the scores, and the previous step's dS K and P K (issued before them); dO Vᵀ stays in flight
                # through P's exponentials
                if DELTA_KNOWN:
                    sc, acc = warpgroup_mma_wait(num_outstanding=1, deps=(s_tok, acc))
                else:
                    sc, acc, pk = warpgroup_mma_wait(num_outstanding=1, deps=(s_tok, acc, pk))
                sc = keys_before_n(sc, start, N, BK)  # the ragged last key block
                p = gl.exp2(sc * qk_scale - lse2[:, None])
                # The refill between the exponentials and the wait for dO Vᵀ: ptxas moves a wgmma wait up past
                # arithmetic that does not touch the product's registers (with the refill before the exponentials,
                # ahead of all but three of the 32 exp2), not past the refill's loads and barriers (sm_90a SASS,
                # Triton 3.6 and 3.9; compile_stats' mufu_beside_wgmma counts them).
                _refill(it, idx_base, TOPK, k_desc, v_desc, b, h, bar_kv, k_bufs, v_bufs, BK)
                dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp_tok,))
            else:
                # waits for the previous step's dS K and P K too: the other stage's K is free from here on
                if DELTA_KNOWN:
                    sc, dp, acc = warpgroup_mma_wait(num_outstanding=0, deps=(s_tok, dp_tok, acc))
                else:
                    sc, dp, acc, pk = warpgroup_mma_wait(num_outstanding=0, deps=(s_tok, dp_tok, acc, pk))
                _refill(it, idx_base, TOPK, k_desc, v_desc, b, h, bar_kv, k_bufs, v_bufs, BK)
                sc = keys_before_n(sc, start, N, BK)  # the ragged last key block
                p = gl.exp2(sc * qk_scale - lse2[:, None])
            d_s += gl.sum(p * dp, axis=1)
            ds = p * (dp * alpha - c[:, None])
            acc = warpgroup_mma(gl.convert_layout(ds.to(dtype), op_layout), k, acc, is_async=True)
            if not DELTA_KNOWN:
                pk = warpgroup_mma(gl.convert_layout(p.to(dtype), op_layout), k, pk, is_async=True)
        if DELTA_KNOWN:
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        else:
            acc, pk = warpgroup_mma_wait(num_outstanding=0, deps=(acc, pk))
        for st in gl.static_range(_STAGES):
            mbarrier.invalidate(bar_kv.index(st))
        mbarrier.invalidate(bar_q)

        # bwd_math.dq_finish
        if DELTA_KNOWN:
            dq = acc * sm_scale
        else:
            corr = gl.convert_layout(c - alpha * d_s, gl.SliceLayout(1, acc_layout))
            dq = (acc + corr[:, None] * pk) * sm_scale
        thread_barrier()  # O's buffer takes dQ: every thread read O before the loop
        out = tiles_2d(o_buf, BM, D)
        out.store(dq.to(dq_desc.dtype))
        fence_async_shared()
        tma_store(dq_desc, [b, h, row0, 0], o_buf)

        row_stats(lse2, alpha, d_s, head_stats(ROWS, bh64, NQ, BQ), rows, NQ * BQ, LINEAR)  # for the dk/dv kernel
        tma.store_wait(0)
