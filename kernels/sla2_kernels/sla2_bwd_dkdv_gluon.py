"""The dk/dv kernel written in Gluon: the contract, grid and arithmetic of sla2_bwd_tma.sla2_bwd_dkdv_tma_kernel with
K and V as the score products' register operands (bwd_math.dkdv_init, dkdv_linear, dkdv_step), its loads placed by
hand.

What the hand placement changes against the Triton kernel:
* everything a program needs before its loop is asked for at its start, together: K, V, dh_j (by TMA, where the
  Triton kernel loads dh_j's 32 KB through registers, since Triton 3.6 cannot feed a product and its transpose
  from one TMA tile) and the first steps' Q, dO and row statistics, so that they arrive while dz_j's sum over the
  CSR list runs;
* a step's loads for the step KV_STAGES − 1 ahead go out right after the wait for its score products, which also
  completes the products of the step before on the stage they refill.

One warp group (4 warps) a key block of 64 keys; QS query rows a step. Shared memory at D 128, QS 32: K, V and dh_j
64 KB, three stages of Q, dO and statistics 49 KB, dK and dV staged in K's and V's buffers for their stores: two
programs an SM. Host side: backward.run_dkdv, where backward.gluon_dkdv_suits allows it.
"""

from __future__ import annotations

from .bwd_math import phi_rows
from .constants import LOG2E
from .gluon_tiles import AVAILABLE, WARPS

GLUON_DKDV_WARPS = WARPS
DKDV_STAGES = 3

if AVAILABLE:
    from .gluon_tiles import (
        fence_async_shared,
        gl,
        gluon,
        mbarrier,
        thread_barrier,
        tiles_2d,
        tma,
        tma_load,
        tma_store,
        warpgroup_mma,
        warpgroup_mma_init,
        warpgroup_mma_wait,
    )

    _LOG2E = gl.constexpr(LOG2E)
    _WARPS = gl.constexpr(GLUON_DKDV_WARPS)
    _STAGES = gl.constexpr(DKDV_STAGES)

    @gluon.jit
    def _load_step(q_desc, do_desc, rows_desc, KV_QBLK, u, b, h, bh, bar, q_buf, do_buf, lse_buf, ds_buf,
                   BQ: gl.constexpr, QS: gl.constexpr):
        """TMA loads of step u's Q and dO tiles and its row statistics (two rows of QS values), onto `bar`."""
        NSUBQ: gl.constexpr = BQ // QS
        r0 = gl.load(KV_QBLK + u // NSUBQ) * BQ + (u % NSUBQ) * QS
        mbarrier.expect(bar, q_desc.block_type.nbytes + do_desc.block_type.nbytes + 2 * rows_desc.block_type.nbytes)
        tma_load(q_desc, [b, h, r0, 0], bar, q_buf)
        tma_load(do_desc, [b, h, r0, 0], bar, do_buf)
        tma_load(rows_desc, [bh, 0, r0], bar, lse_buf)
        tma_load(rows_desc, [bh, 1, r0], bar, ds_buf)

    @gluon.jit
    def sla2_bwd_dkdv_gluon_kernel(
        q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc,  # Gluon descriptors of [B, H, N, D] views; blocks
        # [1, 1, QS or BK, D]
        rows_desc,  # the dq kernel's row statistics, fp32 [B·H, 2, nq·b_q] (bwd_math.row_stats); blocks [1, 1, QS]
        dh_desc,  # dh_j bf16 as [B·H·NK_PAD, 1, D, D]; blocks [1, 1, D, D] (k_desc when LINEAR is off)
        KV_PTR, KV_QBLK, KV_ORDER,
        DZ, DZTOT, NK_PAD,
        N, H, NQ, NK, sm_scale,
        BQ: gl.constexpr, BK: gl.constexpr, D: gl.constexpr, QS: gl.constexpr, LINEAR: gl.constexpr,
    ):
        """dK, dV of one key block: linear part from dh_j, dz_j; sparse part over the query blocks that selected
        it (CSR list, QS query rows a step)."""
        gl.static_assert(BK == 16 * _WARPS, "one warp group: 16 key rows a warp")
        dtype: gl.constexpr = k_desc.dtype
        # wgmma accumulators: transposed scores [BK, QS] and dK, dV [BK, D]
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[_WARPS, 1],
                                                           instr_shape=[16, QS, 16])
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[_WARPS, 1],
                                                             instr_shape=[16, D, 16])
        kv_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
        acc_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        key_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
        q_cols: gl.constexpr = gl.SliceLayout(0, s_layout)
        acc_cols: gl.constexpr = gl.SliceLayout(0, acc_layout)
        acc_keys: gl.constexpr = gl.SliceLayout(1, acc_layout)
        NSUBQ: gl.constexpr = BQ // QS

        flat = gl.load(KV_ORDER + gl.program_id(0))  # bh·NK + j, in selection.launch_order's order
        bh = flat // NK
        j = flat % NK
        b = bh // H
        h = bh % H
        bh64 = bh.to(gl.int64)
        start = gl.load(KV_PTR + flat)  # the CSR list is indexed by the same flat id
        end = gl.load(KV_PTR + flat + 1)
        row_k = j * BK
        first = start * NSUBQ
        steps = (end - start) * NSUBQ

        k_buf = gl.allocate_shared_memory(dtype, [1, 1, BK, D], k_desc.layout)  # then dK's staging
        v_buf = gl.allocate_shared_memory(dtype, [1, 1, BK, D], v_desc.layout)  # then dV's staging
        q_bufs = gl.allocate_shared_memory(dtype, [_STAGES, 1, 1, QS, D], q_desc.layout)
        do_bufs = gl.allocate_shared_memory(dtype, [_STAGES, 1, 1, QS, D], do_desc.layout)
        lse_bufs = gl.allocate_shared_memory(gl.float32, [_STAGES, 1, 1, QS], rows_desc.layout)
        ds_bufs = gl.allocate_shared_memory(gl.float32, [_STAGES, 1, 1, QS], rows_desc.layout)
        bar_kv = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        bar_dh = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        bars = gl.allocate_shared_memory(gl.int64, [_STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(bar_kv, count=1)
        mbarrier.init(bar_dh, count=1)
        for st in gl.static_range(_STAGES):
            mbarrier.init(bars.index(st), count=1)
        fence_async_shared()

        mbarrier.expect(bar_kv, 2 * k_desc.block_type.nbytes)
        tma_load(k_desc, [b, h, row_k, 0], bar_kv, k_buf)
        tma_load(v_desc, [b, h, row_k, 0], bar_kv, v_buf)
        if LINEAR:
            dh_buf = gl.allocate_shared_memory(dh_desc.dtype, [1, 1, D, D], dh_desc.layout)
            mbarrier.expect(bar_dh, dh_desc.block_type.nbytes)
            tma_load(dh_desc, [bh * NK_PAD + j, 0, 0, 0], bar_dh, dh_buf)
        for st in gl.static_range(_STAGES - 1):
            if st < steps:
                _load_step(q_desc, do_desc, rows_desc, KV_QBLK, first + st, b, h, bh, bars.index(st),
                           q_bufs.index(st), do_bufs.index(st), lse_bufs.index(st), ds_bufs.index(st), BQ, QS)

        # bwd_math.dkdv_init: the linear part, (dV_j, dK_j·√D) before the loop
        if LINEAR:
            offs_d = gl.arange(0, D, layout=acc_cols)
            dz_sel = gl.zeros([D], dtype=gl.float32, layout=acc_cols)
            for t in range(start, end):
                dz_sel += gl.load(DZ + (bh64 * NQ + gl.load(KV_QBLK + t).to(gl.int64)) * D + offs_d)
            dz = gl.load(DZTOT + bh64 * D + offs_d) - dz_sel
        mbarrier.wait(bar_kv, 0)
        k2 = tiles_2d(k_buf, BK, D)
        v2 = tiles_2d(v_buf, BK, D)
        if LINEAR:
            # bwd_math.dkdv_linear: dV = φK dh, dφK = V dhᵀ + dz, then φ's backward
            k_ok_acc = (row_k + gl.arange(0, BK, layout=acc_keys)) < N
            fk = gl.where(k_ok_acc[:, None], phi_rows(k2.load(acc_layout)), 0.0)
            mbarrier.wait(bar_dh, 0)
            dh = tiles_2d(dh_buf, D, D)
            zero_acc = gl.zeros([BK, D], dtype=gl.float32, layout=acc_layout)
            dv_acc = warpgroup_mma(gl.convert_layout(fk.to(gl.bfloat16), acc_op), dh, zero_acc, use_acc=False)
            dfk = warpgroup_mma(v2.load(acc_op), dh.permute((1, 0)), zero_acc, use_acc=False) + dz[None, :]
            dk_acc = fk * (dfk - gl.sum(dfk * fk, axis=1)[:, None]) / sm_scale
        else:
            dv_acc = gl.zeros([BK, D], dtype=gl.float32, layout=acc_layout)
            dk_acc = gl.zeros([BK, D], dtype=gl.float32, layout=acc_layout)
        k_op = k2.load(kv_op)  # the score products' register operands (BwdConfig.dkdv_register_kv)
        v_op = v2.load(kv_op)

        qk_scale = sm_scale * _LOG2E
        k_ok = (row_k + gl.arange(0, BK, layout=key_rows)) < N
        zero_s = gl.zeros([BK, QS], dtype=gl.float32, layout=s_layout)
        dv_acc = warpgroup_mma_init(dv_acc)
        dk_acc = warpgroup_mma_init(dk_acc)
        for i in range(0, steps):
            stage = i % _STAGES
            u = first + i
            mbarrier.wait(bars.index(stage), (i // _STAGES) & 1)
            q = tiles_2d(q_bufs.index(stage), QS, D)
            do = tiles_2d(do_bufs.index(stage), QS, D)
            st_tok = warpgroup_mma(k_op, q.permute((1, 0)), zero_s, use_acc=False, is_async=True)
            dpt_tok = warpgroup_mma(v_op, do.permute((1, 0)), zero_s, use_acc=False, is_async=True)
            # completes the step before's dV, dK products too: the stage they read is free from here on
            sc, dpt, dv_acc, dk_acc = warpgroup_mma_wait(num_outstanding=0, deps=(st_tok, dpt_tok, dv_acc, dk_acc))
            if i + _STAGES - 1 < steps:
                nxt = (i + _STAGES - 1) % _STAGES
                _load_step(q_desc, do_desc, rows_desc, KV_QBLK, u + _STAGES - 1, b, h, bh, bars.index(nxt),
                           q_bufs.index(nxt), do_bufs.index(nxt), lse_bufs.index(nxt), ds_bufs.index(nxt), BQ, QS)
            lse2a = lse_bufs.index(stage).reshape([QS]).load(q_cols)
            d_s = ds_bufs.index(stage).reshape([QS]).load(q_cols)
            r0 = gl.load(KV_QBLK + u // NSUBQ) * BQ + (u % NSUBQ) * QS
            q_ok = (r0 + gl.arange(0, QS, layout=q_cols)) < N
            # bwd_math.dkdv_step: α·Pᵀ from the statistics, dV += α Pᵀ dO, dK += dSᵀ Q
            pt = gl.exp2(sc * qk_scale - lse2a[None, :])
            pt = gl.where(k_ok[:, None] & q_ok[None, :], pt, 0.0)
            dst = pt * (dpt - d_s[None, :])
            dv_acc = warpgroup_mma(gl.convert_layout(pt.to(dtype), acc_op), do, dv_acc, is_async=True)
            dk_acc = warpgroup_mma(gl.convert_layout(dst.to(dtype), acc_op), q, dk_acc, is_async=True)
        dv_acc, dk_acc = warpgroup_mma_wait(num_outstanding=0, deps=(dv_acc, dk_acc))
        for st in gl.static_range(_STAGES):
            mbarrier.invalidate(bars.index(st))
        mbarrier.invalidate(bar_kv)
        mbarrier.invalidate(bar_dh)

        thread_barrier()  # every thread's reads of K and V are done before their buffers take dK and dV
        k2.store((dk_acc * sm_scale).to(dk_desc.dtype))
        v2.store(dv_acc.to(dv_desc.dtype))
        fence_async_shared()
        tma_store(dk_desc, [b, h, row_k, 0], k_buf)
        tma_store(dv_desc, [b, h, row_k, 0], v_buf)
        tma.store_wait(0)
