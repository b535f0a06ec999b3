"""The bf16/fp16 forward's main kernel written in Gluon: the contract, grid and arithmetic of
sla2_fwd_tma.sla2_fwd_tma_kernel without STORE_OS and LINEAR_PASS (sla2_fwd.softmax_step in the loop,
tma_linear_mix in the epilogue), with its tiles' loads placed by hand.

Two placements that Triton's pipeliner does not make (Nsight Compute, Wan-1.3B at 97%: 14% of the Triton kernel's
samples wait for a step's K, V at the loop's top, 26% after the loop for the epilogue's Q and H_I; docs/results.md
"Where the sparse loops wait"):
* each step's K, V loads are issued as soon as their stage is free, a softmax or more ahead of use;
* H_I's loads for the epilogue go into the stage the last steps free, so they arrive during the last softmax, and
  Q stays in shared memory through the loop instead of coming back by TMA.

Two loops (OVERLAP, FwdConfig.gluon_overlap):
* serial (the default): one warp group (4 warps) a query block; a step's score product, its wait (which also
  completes the previous step's P V), the softmax, then P V. The tensor cores idle during the softmax unless the
  SM's other program fills them. Shared memory at b_q 128, b_k 64, D 128: Q 32 KB and two stages of K and V, 96 KB:
  two programs an SM.
* overlapped: step j's score product and step j − 1's P V are issued together and the softmax of step j runs while
  P V is in flight (FlashAttention-3's overlap inside a warp group). That holds a score tile, the previous P and
  the accumulator at once, which fits a thread's registers only at 16 query rows a warp: b_q / 16 warps (two warp
  groups at b_q 128) and one program an SM, with three stages (loads two steps ahead).
H_I ([D, D] bf16) takes a free stage's K and V buffers as D / b_k row pieces (b_k 64: D 64 or 128). Host side:
forward.run_forward, where fwd_gluon_suits allows it.
"""

from __future__ import annotations

from .constants import LN2, LOG2E
from .gluon_tiles import AVAILABLE, WARPS

GLUON_FWD_WARPS = WARPS  # serial loop
KV_STAGES = 2  # serial loop: two programs an SM
OVERLAP_KV_STAGES = 3  # overlapped loop: one program an SM, loads two steps ahead


def launch_shape(block_q: int, overlap: bool) -> tuple[int, int]:
    """(warps, stages) of a program: the overlapped loop takes 16 query rows a warp."""
    return (block_q // 16, OVERLAP_KV_STAGES) if overlap else (GLUON_FWD_WARPS, KV_STAGES)

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

    _LOG2E = gl.constexpr(LOG2E)
    _LN2 = gl.constexpr(LN2)

    @gluon.jit
    def _load_h(h_desc, blk, bar, k_buf, v_buf, BK: gl.constexpr, D: gl.constexpr):
        """TMA loads of H_I's rows [0, b_k) into k_buf and, where D = 2 b_k, [b_k, 2 b_k) into v_buf."""
        mbarrier.expect(bar, (D // BK) * h_desc.block_type.nbytes)
        tma_load(h_desc, [blk, 0, 0, 0], bar, k_buf)
        if D // BK == 2:
            tma_load(h_desc, [blk, 0, BK, 0], bar, v_buf)

    @gluon.jit
    def _online_softmax(sc, m_i, l_i, qk_scale):
        """sla2_fwd.online_step on one step's scores: the row maximum on the raw scores, one fused multiply-add a
        score; returns P, the accumulator's correction, and the new row maxima and sums."""
        m_new = gl.maximum(m_i, gl.max(sc, axis=1) * qk_scale)
        p = gl.exp2(sc * qk_scale - m_new[:, None])
        corr = gl.exp2(m_i - m_new)
        return p, corr, m_new, l_i * corr + gl.sum(p, axis=1)

    @gluon.jit
    def _overlapped_step(it, q, k_bufs, v_bufs, bar_kv, p_op, corr, acc, m_i, l_i, zero_s, qk_scale, idx_base, N,
                         TOPK, k_desc, v_desc, h_desc, b, h, blk, bar_h, mixes,
                         BK: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, MASK: gl.constexpr):
        """Step `it` ≥ 1 of the overlapped loop: its scores issued, the accumulator rescaled by the previous
        softmax's `corr` while they run, step it − 1's P V (p_op) issued, this step's softmax while P V runs, then
        the stage P V read refilled with step it + 2's K, V (or H_I's rows after the last step's). Returns this
        step's P as the next P V's operand and its correction, still to apply. Nothing touches the accumulator
        between the two waits: ptxas places its wait for P V before the first such use, so a rescale there would
        pull that wait in front of the softmax. MASK: the keys at or past N of a ragged last block."""
        stage = it % STAGES
        prev = (it - 1) % STAGES  # = (it + 2) % STAGES
        mbarrier.wait(bar_kv.index(stage), (it // STAGES) & 1)
        s_tok = warpgroup_mma(q, tiles_2d(k_bufs.index(stage), BK, D).permute((1, 0)), zero_s, use_acc=False,
                              is_async=True)
        acc = acc * gl.convert_layout(corr, gl.SliceLayout(1, acc.type.layout))[:, None]
        acc = warpgroup_mma(p_op, tiles_2d(v_bufs.index(prev), BK, D), acc, is_async=True)
        sc = warpgroup_mma_wait(num_outstanding=1, deps=(s_tok,))  # the scores; P V still in flight
        if MASK:
            sc = keys_before_n(sc, gl.load(idx_base + it) * BK, N, BK)
        p, corr, m_i, l_i = _online_softmax(sc, m_i, l_i, qk_scale)
        # The refill's block index is read between the softmax and the wait for P V: ptxas moves a wgmma wait up
        # past arithmetic that does not touch the product's registers (without this load, before all but three of
        # the softmax's 34 exp2), not past this load (sm_90a SASS, Triton 3.6 and 3.9; compile_stats'
        # mufu_beside_wgmma counts them).
        start_next = 0
        if it + 2 < TOPK:
            start_next = gl.load(idx_base + it + 2) * BK
        acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))  # P V read p_op's registers
        if it + 2 < TOPK:
            load_kv(k_desc, v_desc, b, h, start_next, bar_kv.index(prev), k_bufs.index(prev), v_bufs.index(prev))
        elif it + 2 == TOPK and mixes:  # the stage after the last step's: H_I's
            _load_h(h_desc, blk, bar_h, k_bufs.index(prev), v_bufs.index(prev), BK, D)
        return gl.convert_layout(p.to(p_op.dtype), p_op.type.layout), corr, acc, m_i, l_i

    @gluon.jit
    def sla2_fwd_gluon_kernel(
        q_desc, k_desc, v_desc, o_desc,  # Gluon descriptors of [B, H, N, D] views; blocks [1, 1, BQ or BK, D]
        h_desc,  # H_I bf16 as [B·H·nq, 1, D, D] (forward.linear_state), blocks [1, 1, BK, D]; q_desc if unused
        IDX, ALPHA, LSE, ZI,  # IDX int32 [BH, nq, topk]; ALPHA fp32 [B, H, nq] view; LSE fp32 [BH, N]; ZI fp32
        # [BH, nq, D]
        sab, sah, saq,
        N, H, NQ, TOPK, sm_scale,
        BQ: gl.constexpr, BK: gl.constexpr, D: gl.constexpr, LINEAR: gl.constexpr,
        OVERLAP: gl.constexpr, WARPS: gl.constexpr, STAGES: gl.constexpr,  # launch_shape(BQ, OVERLAP)
    ):
        gl.static_assert(BQ % (16 * WARPS) == 0, "whole warp groups: a multiple of 16 query rows a warp")
        gl.static_assert(D // BK <= 2, "H_I's pieces fill one stage's K and V buffers")
        gl.static_assert(not OVERLAP or STAGES == 3, "the overlapped loop loads two steps ahead")
        dtype: gl.constexpr = q_desc.dtype
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                           instr_shape=[16, BK, 16])
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                             instr_shape=[16, D, 16])
        op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
        col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
        acc_rows: gl.constexpr = gl.SliceLayout(1, acc_layout)

        pid_m = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // H
        h = bh % H
        bh64 = bh.to(gl.int64)
        row0 = pid_m * BQ
        idx_base = IDX + (bh64 * NQ + pid_m) * TOPK
        blk = bh * NQ + pid_m  # this query block's H_I, Z_I
        if LINEAR:
            alpha = gl.load(ALPHA + b.to(gl.int64) * sab + h.to(gl.int64) * sah + pid_m * saq)
        else:
            alpha = 1.0

        q_buf = gl.allocate_shared_memory(dtype, [1, 1, BQ, D], q_desc.layout)  # then O's staging for its store
        k_bufs = gl.allocate_shared_memory(dtype, [STAGES, 1, 1, BK, D], k_desc.layout)
        v_bufs = gl.allocate_shared_memory(dtype, [STAGES, 1, 1, BK, D], v_desc.layout)
        bar_q = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        bar_h = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        bar_kv = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(bar_q, count=1)
        mbarrier.init(bar_h, count=1)
        for st in gl.static_range(STAGES):
            mbarrier.init(bar_kv.index(st), count=1)
        fence_async_shared()

        # whether the epilogue mixes in the linear branch, whose H_I the last steps fetch. Without one it never does,
        # but the branch stays compiled: with it compiled out, Triton 3.6's lowering to LLVM fails an assertion
        # (SmallVector index, sm_90a compile of LINEAR=False); a condition false at run time avoids that.
        if LINEAR:
            mixes = alpha != 1.0
        else:
            mixes = TOPK < 0

        mbarrier.expect(bar_q, q_desc.block_type.nbytes)
        tma_load(q_desc, [b, h, row0, 0], bar_q, q_buf)
        for st in gl.static_range(STAGES):
            if st < TOPK:
                load_kv(k_desc, v_desc, b, h, gl.load(idx_base + st) * BK, bar_kv.index(st), k_bufs.index(st),
                        v_bufs.index(st))
            elif OVERLAP:
                if st == TOPK and mixes:  # fewer steps than stages: H_I's stage (TOPK % STAGES) is free already
                    _load_h(h_desc, blk, bar_h, k_bufs.index(st), v_bufs.index(st), BK, D)

        qk_scale = sm_scale * _LOG2E
        zero_s = gl.zeros([BQ, BK], dtype=gl.float32, layout=s_layout)
        m_i = gl.full([BQ], float("-inf"), dtype=gl.float32, layout=row_layout)
        l_i = gl.zeros([BQ], dtype=gl.float32, layout=row_layout)
        acc = gl.zeros([BQ, D], dtype=gl.float32, layout=acc_layout)
        mbarrier.wait(bar_q, 0)
        q = tiles_2d(q_buf, BQ, D)
        if OVERLAP:
            # step 0's scores and softmax; then each step issues its scores and the previous step's P V together
            mbarrier.wait(bar_kv.index(0), 0)
            s_tok = warpgroup_mma(q, tiles_2d(k_bufs.index(0), BK, D).permute((1, 0)), zero_s, use_acc=False,
                                  is_async=True)
            sc = warpgroup_mma_wait(num_outstanding=0, deps=(s_tok,))
            sc = keys_before_n(sc, gl.load(idx_base) * BK, N, BK)
            p, corr, m_i, l_i = _online_softmax(sc, m_i, l_i, qk_scale)
            p_op = gl.convert_layout(p.to(dtype), op_layout)
            # Only the last step can reach past N (the indices ascend), and only it masks: ptxas completes every
            # product in flight where branches join, so a mask's branch would end the overlap in every step.
            for it in range(1, TOPK - 1):
                p_op, corr, acc, m_i, l_i = _overlapped_step(
                    it, q, k_bufs, v_bufs, bar_kv, p_op, corr, acc, m_i, l_i, zero_s, qk_scale, idx_base, N, TOPK,
                    k_desc, v_desc, h_desc, b, h, blk, bar_h, mixes, BK, D, STAGES, False)
            if TOPK > 1:
                p_op, corr, acc, m_i, l_i = _overlapped_step(
                    TOPK - 1, q, k_bufs, v_bufs, bar_kv, p_op, corr, acc, m_i, l_i, zero_s, qk_scale, idx_base, N,
                    TOPK, k_desc, v_desc, h_desc, b, h, blk, bar_h, mixes, BK, D, STAGES, True)
            acc = acc * gl.convert_layout(corr, acc_rows)[:, None]
            acc = warpgroup_mma(p_op, tiles_2d(v_bufs.index((TOPK - 1) % STAGES), BK, D), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        else:
            acc = warpgroup_mma_init(acc)  # the loop carries it as an asynchronous product's result
            for it in range(0, TOPK):
                stage = it % STAGES
                start = gl.load(idx_base + it) * BK
                mbarrier.wait(bar_kv.index(stage), (it // STAGES) & 1)
                k = tiles_2d(k_bufs.index(stage), BK, D)
                v = tiles_2d(v_bufs.index(stage), BK, D)
                s_tok = warpgroup_mma(q, k.permute((1, 0)), zero_s, use_acc=False, is_async=True)
                # completes the previous step's P V too: the other stage is free from here on
                sc, acc = warpgroup_mma_wait(num_outstanding=0, deps=(s_tok, acc))
                nxt = (it + 1) % STAGES
                if it + 1 < TOPK:
                    if it >= 1:  # steps 0 and 1 were issued before the loop
                        load_kv(k_desc, v_desc, b, h, gl.load(idx_base + it + 1) * BK, bar_kv.index(nxt),
                                k_bufs.index(nxt), v_bufs.index(nxt))
                elif mixes:
                    _load_h(h_desc, blk, bar_h, k_bufs.index(nxt), v_bufs.index(nxt), BK, D)
                sc = keys_before_n(sc, start, N, BK)  # the ragged last key block
                p, corr, m_i, l_i = _online_softmax(sc, m_i, l_i, qk_scale)
                acc = acc * gl.convert_layout(corr, acc_rows)[:, None]
                acc = warpgroup_mma(gl.convert_layout(p.to(dtype), op_layout), v, acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))

        inv_l = gl.convert_layout(1.0 / l_i, acc_rows)
        if mixes:
            # sla2_fwd_tma.tma_linear_mix: O = (1 − α)/den · (α·den/(1 − α)·O_s + e H_I), e = exp(Q − rowmax),
            # den = e·Z_I, with e in b_k-wide pieces of head_dim (the pieces of H_I's rows that came by TMA)
            NP: gl.constexpr = D // BK
            mx = gl.full([BQ], float("-inf"), dtype=gl.float32, layout=row_layout)
            for c in gl.static_range(NP):
                mx = gl.maximum(mx, gl.max(q.slice(c * BK, BK, dim=1).load(s_layout), axis=1).to(gl.float32))
            den = gl.zeros([BQ], dtype=gl.float32, layout=row_layout)
            for c in gl.static_range(NP):
                qc = q.slice(c * BK, BK, dim=1).load(s_layout).to(gl.float32)
                e = gl.exp2((qc - mx[:, None]) * _LOG2E).to(gl.bfloat16).to(gl.float32)
                z_c = gl.load(ZI + blk.to(gl.int64) * D + c * BK + gl.arange(0, BK, layout=col_layout))
                den += gl.sum(e * z_c[None, :], axis=1)
            acc = acc * gl.convert_layout(alpha * den / (1.0 - alpha), acc_rows)[:, None] * inv_l[:, None]
            mbarrier.wait(bar_h, 0)
            last = TOPK % STAGES  # the stage after the last step's (TOPK − 1), where H_I came
            for c in gl.static_range(NP):
                qc = q.slice(c * BK, BK, dim=1).load(s_layout).to(gl.float32)
                e = gl.exp2((qc - mx[:, None]) * _LOG2E).to(gl.bfloat16)
                if c == 0:
                    h_c = tiles_2d(k_bufs.index(last), BK, D)
                else:
                    h_c = tiles_2d(v_bufs.index(last), BK, D)
                acc = warpgroup_mma(gl.convert_layout(e, op_layout), h_c, acc)
            o = acc * gl.convert_layout((1.0 - alpha) / den, acc_rows)[:, None]
        else:
            o = acc * inv_l[:, None]
        for st in gl.static_range(STAGES):
            mbarrier.invalidate(bar_kv.index(st))
        mbarrier.invalidate(bar_q)
        mbarrier.invalidate(bar_h)

        thread_barrier()  # every thread's reads of Q are done before its buffer takes O
        out = tiles_2d(q_buf, BQ, D)
        out.store(o.to(o_desc.dtype))
        fence_async_shared()
        tma_store(o_desc, [b, h, row0, 0], q_buf)
        rows = row0 + gl.arange(0, BQ, layout=row_layout)
        gl.store(LSE + bh64 * N + rows, (m_i + gl.log2(l_i)) * _LN2, mask=rows < N)
        tma.store_wait(0)
