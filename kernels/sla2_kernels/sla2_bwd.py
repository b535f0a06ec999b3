"""SLA2 backward in Triton (SLA2.md §6): sparse-branch FlashAttention backward over the selected blocks,
linear-branch gradients by totals minus selected, dα, and the chain rule through φ = softmax over head_dim.

Notation per (batch·head), query block I (b_q rows), key block j (b_k rows), α = α_I (effective: 1 when every
key block is selected), forward O = α O_s + (1 − α) O_l and its lse (sparse branch, natural log):
  Do_i = dO_i·O_i,  Dl_i = dO_i·O_l,i                      (O_l recomputed; O_s is never needed)
  Δ_i  = rowsum(dO_s ⊙ O_s) = Do_i − (1 − α) Dl_i           (dO_s = α dO; no division by α)
  dα_I = Σ_{i∈I} dO_i·(O_s,i − O_l,i) = Σ_{i∈I} (Do_i − Dl_i) / α   (since O − O_l = α (O_s − O_l))
Sparse branch (P = exp(S/√D − lse) on selected blocks): dP = α dO Vᵀ, dS = P ⊙ (dP − Δ),
  dQ += dS K/√D, dK += dSᵀ Q/√D, dV += α Pᵀ dO.
Linear branch (g = (1 − α) dO, φQ, ψ = φQ / den, H_I, Z_I = sums over the blocks I did not select):
  dφQ_i = (g_i H_Iᵀ − (1 − α) Dl_i Z_I) / den_i
  dH_I  = ψ_Iᵀ g_I,   dZ_I = −Σ_i (1 − α) Dl_i ψ_i
  key block j: dh_j = Σ_{I not selecting j} dH_I,  dz_j = dZ_tot − Σ_{I selecting j} dZ_I
  dV_j += φK_j dh_j,  dφK_j = V_j dh_jᵀ + dz_j
  φ backward: dx = φ ⊙ (dφ − rowsum(dφ ⊙ φ)).

Kernels (launch order):
  1. prologue kernel, one program per (query block, batch·head): reads the forward's H_I, Z_I
     (api.linear_state), recomputes O_l and writes Δ, dα_I, dH_I, dZ_I and the linear dQ (into dQ);
     dq kernel, the same grid: FlashAttention's dQ over the selected key blocks, added to the linear dQ.
  2. dh_j = Σ_{I not selecting j} dH_I for every key block at once: the transposed complement mask (bf16,
     [nq, nk] per head, the router scores' shape) times dH on the tensor cores; dZ_tot = Σ_I dZ_I.
  3. dk/dv kernel, one program per (key block, batch·head), walking the CSR list of the query blocks that
     selected that key block (built on the GPU from the complement mask of step 2, no N×nk tensor):
     dz_j = dZ_tot − the list's dZ_I, the linear part from dh_j; then the sparse dK/dV.
     Within a head, key blocks run in order of decreasing list length (longest first), so a heavily
     selected key block does not start last; heads stay adjacent so that their Q, dO stay in L2.

Memory besides the gradients: Δ [B, H, N] fp32, ψ [B·H, nq·b_q, D] bf16 during the prologue only, dH
[B, H, nq, D, D] and dh [B, H, nk, D, D] (bf16), dZ [B, H, nq, D] fp32, the CSR list (B·H·nq·topk int32), the
complement mask (B·H·nq·nk bf16, as the router's scores; also what the CSR lists are built from) and the forward's
H_I, Z_I: O(N·D²/b_k + N²/(b_q·b_k)), never O(N²·D) or O(N·N/b_k).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from .api import NK_ALIGN, bhnd_view, complement_mask, descriptor, stage_fallbacks, tma_hardware, tma_ready
from .bwd_math import dkdv_init, dkdv_step, dq_step, prologue_linear_rows, query_rows
from .dot import mma_acc
from .key_block_lists import KEY_TILE, QUERY_TILE, key_block_fill_kernel
from .quant_math import LOG2E
from .sla2_bwd_tma import sla2_bwd_dkdv_tma_kernel, sla2_bwd_dq_tma_kernel
from .sla2_fwd import load_linear_state


@triton.jit
def sla2_bwd_prologue_kernel(
    Q, O, DO, DQ,
    DELTA, ALPHA, HI, ZI,
    DH, DZ, DALPHA,
    PSI,  # bf16 [B·H, nq·b_q, D] scratch: ψ from pass 1 to pass 2
    sqb, sqh, sqn,
    sob, soh, son,
    sdob, sdoh, sdon,
    sdqb, sdqh, sdqn,
    sab, sah, saq,
    N, H, NQ,
    BQ: tl.constexpr, D: tl.constexpr, RS: tl.constexpr, DC: tl.constexpr,  # RS rows a step; DC columns of dH_I
    LINEAR: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Per query block: Δ, dα_I and (linear branch) dH_I, dZ_I and the linear dQ, written into DQ for the dq
    kernel to add. A kernel of its own: fused into the dq kernel, this straight-line part pushed the sparse
    loop to 255 registers and 1.2 KB of spills a thread (sm_90 compile; 193 registers, none, without it).
    Two passes over the block's rows, RS rows a step: the per-row work (pass 1, which stores ψ to PSI), then
    dH_I = (1 − α) ψᵀ dO, DC columns at a time (pass 2), so that dH_I's fp32 accumulator never shares the
    registers with pass 1's tiles (the whole block at once: 255 registers, 60 spilled, one program an SM, 0.553 ms
    at Wan-1.3B, 97%; these passes 0.443 ms, H100, 2026-11-27; ψ recomputed from Q in pass 2 instead of stored:
    0.553 again, its exps and row reductions twice more). What is left is latency-bound: two 4-warp programs an
    SM (224 registers); ncu on the recomputing version counted 1.1 TB/s and 2.7 cycles between issues a scheduler."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b64 = (bh // H).to(tl.int64)
    h64 = (bh % H).to(tl.int64)
    bh64 = bh.to(tl.int64)
    offs_d = tl.arange(0, D)
    q_bh = Q + b64 * sqb + h64 * sqh
    do_bh = DO + b64 * sdob + h64 * sdoh
    if LINEAR:
        alpha = tl.load(ALPHA + b64 * sab + h64 * sah + pid_m * saq)
        h16, z_i = load_linear_state(HI, ZI, bh64, pid_m, NQ, D)  # the forward's own H_I (bf16), Z_I
        dz_acc = tl.zeros([D], dtype=tl.float32)
    dalpha = 0.0
    for r in range(0, BQ, RS):
        offs_m = pid_m * BQ + r + tl.arange(0, RS)
        q_ok = offs_m < N
        do = tl.load(do_bh + offs_m[:, None] * sdon + offs_d[None, :], mask=q_ok[:, None], other=0.0)
        o = tl.load(O + b64 * sob + h64 * soh + offs_m[:, None] * son + offs_d[None, :], mask=q_ok[:, None],
                    other=0.0)
        d_o = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)  # Do = dO·O
        if LINEAR:
            q = tl.load(q_bh + offs_m[:, None] * sqn + offs_d[None, :], mask=q_ok[:, None], other=0.0)
            delta, da, dz, dq_lin, psi16 = prologue_linear_rows(do, d_o, q, q_ok, h16, z_i, alpha, INTERPRET)
            dalpha += da
            dz_acc += dz
            tl.store(PSI + (bh64 * NQ * BQ + offs_m[:, None]) * D + offs_d[None, :], psi16)
            tl.store(DQ + b64 * sdqb + h64 * sdqh + offs_m[:, None] * sdqn + offs_d[None, :],
                     dq_lin.to(DQ.dtype.element_ty), mask=q_ok[:, None])
        else:
            delta = d_o  # every block selected: α is exactly 1 (reference.effective_alpha)
        tl.store(DELTA + bh64 * N + offs_m, delta, mask=q_ok)
    if LINEAR:
        tl.store(DZ + (bh64 * NQ + pid_m) * D + offs_d, dz_acc)
        dalpha = dalpha / alpha
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
    tl.store(DALPHA + bh64 * NQ + pid_m, dalpha)


@triton.jit
def sla2_bwd_dq_kernel(
    Q, K, V, DO, DQ,
    LSE, DELTA, IDX, ALPHA,
    sqb, sqh, sqn,
    skb, skh, skn,
    svb, svh, svn,
    sdob, sdoh, sdon,
    sdqb, sdqh, sdqn,
    sab, sah, saq,
    N, H, NQ, TOPK, sm_scale,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr,
    LINEAR: tl.constexpr, INTERPRET: tl.constexpr, BM: tl.constexpr,  # BM: query rows per program (divides BQ)
):
    """FlashAttention's dQ over the selected key blocks, plus the linear dQ the prologue left in DQ.
    dQ rows are independent, so a query block may be split over BQ // BM programs (BwdConfig.dq_rows)."""
    pid_m = tl.program_id(0) // (BQ // BM)  # the query block
    bh = tl.program_id(1)
    b64 = (bh // H).to(tl.int64)
    h64 = (bh % H).to(tl.int64)
    bh64 = bh.to(tl.int64)

    offs_m = pid_m * BQ + (tl.program_id(0) % (BQ // BM)) * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    q_ok, lse2, delta, alpha = query_rows(LSE, DELTA, ALPHA + b64 * sab + h64 * sah, saq, bh64, pid_m, offs_m, N,
                                          LINEAR)
    k_base = K + b64 * skb + h64 * skh
    v_base = V + b64 * svb + h64 * svh
    idx_base = IDX + (bh64 * NQ + pid_m) * TOPK
    do = tl.load(DO + b64 * sdob + h64 * sdoh + offs_m[:, None] * sdon + offs_d[None, :], mask=q_ok[:, None],
                 other=0.0)
    acc = tl.zeros([BM, D], dtype=tl.float32)

    # Sparse dQ over the selected blocks, one a step, its rows addressed through a per-row index (the forward's
    # scalar-index form was not measured here). Two blocks a step or half-block steps measured slower on the H100
    # (1.30–1.48 vs 1.24 ms, Wan-1.3B at 97%) and were removed.
    qk_scale = sm_scale * LOG2E
    q = tl.load(Q + b64 * sqb + h64 * sqh + offs_m[:, None] * sqn + offs_d[None, :], mask=q_ok[:, None], other=0.0)
    offs_b = tl.arange(0, BK)
    for it in range(0, TOPK):
        blk = tl.load(idx_base + it + offs_b * 0)  # the step's key block, once per row
        rows = blk * BK + offs_b
        kv_ok = rows < N
        k = tl.load(k_base + rows[:, None] * skn + offs_d[None, :], mask=kv_ok[:, None], other=0.0)
        v = tl.load(v_base + rows[:, None] * svn + offs_d[None, :], mask=kv_ok[:, None], other=0.0)
        acc = dq_step(q, k, v, do, kv_ok, q_ok, lse2, delta, alpha, acc, qk_scale, INTERPRET)
    dq_ptrs = DQ + b64 * sdqb + h64 * sdqh + offs_m[:, None] * sdqn + offs_d[None, :]
    dq = acc * sm_scale
    if LINEAR:
        dq += tl.load(dq_ptrs, mask=q_ok[:, None], other=0.0).to(tl.float32)
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=q_ok[:, None])


@triton.jit
def sla2_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV,
    LSE, DELTA, ALPHA,
    KV_PTR, KV_QBLK, KV_ORDER,
    DHK, DZ, DZTOT, NK_PAD,  # DHK bf16 [BH, NK_PAD, D, D]: dh_j = Σ_{I not selecting j} dH_I
    sqb, sqh, sqn,
    skb, skh, skn,
    svb, svh, svn,
    sdob, sdoh, sdon,
    sdkb, sdkh, sdkn,
    sdvb, sdvh, sdvn,
    sab, sah, saq,
    N, H, NQ, NK, sm_scale,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, QS: tl.constexpr, LINEAR: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    bh = tl.program_id(1)
    b64 = (bh // H).to(tl.int64)
    h64 = (bh % H).to(tl.int64)
    bh64 = bh.to(tl.int64)
    j = tl.load(KV_ORDER + bh64 * NK + tl.program_id(0))  # longest list first within the head
    start = tl.load(KV_PTR + bh64 * NK + j)
    end = tl.load(KV_PTR + bh64 * NK + j + 1)

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
    alpha_bh = ALPHA + b64 * sab + h64 * sah
    NSUBQ: tl.constexpr = BQ // QS
    offs_qs = tl.arange(0, QS)
    for u in range(start * NSUBQ, end * NSUBQ):
        i_blk = tl.load(KV_QBLK + u // NSUBQ)
        rows = i_blk * BQ + (u % NSUBQ) * QS + offs_qs
        q_ok, lse2, delta, alpha = query_rows(LSE, DELTA, alpha_bh, saq, bh64, i_blk, rows, N, LINEAR)
        q = tl.load(Q + b64 * sqb + h64 * sqh + rows[:, None] * sqn + offs_d[None, :], mask=q_ok[:, None], other=0.0)
        do = tl.load(DO + b64 * sdob + h64 * sdoh + rows[:, None] * sdon + offs_d[None, :],
                     mask=q_ok[:, None], other=0.0)
        dv_acc, dk_acc = dkdv_step(k, v, q, do, k_ok, q_ok, lse2, delta, alpha, dv_acc, dk_acc, qk_scale,
                                   INTERPRET)
    tl.store(DK + b64 * sdkb + h64 * sdkh + offs_n[:, None] * sdkn + offs_d[None, :],
             (dk_acc * sm_scale).to(DK.dtype.element_ty), mask=k_ok[:, None])
    tl.store(DV + b64 * sdvb + h64 * sdvh + offs_n[:, None] * sdvn + offs_d[None, :],
             dv_acc.to(DV.dtype.element_ty), mask=k_ok[:, None])


# ----------------------------------------------------------------------------------------------------------
# Host side

try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - older layouts of triton
    OutOfResources = RuntimeError


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _bhn_strides(t: torch.Tensor, layout: str) -> tuple[int, int, int]:
    """(batch, head, token) strides of a [B, H, N, D] ("bhnd") or [B, N, H, D] ("bnhd") tensor."""
    if layout == "bnhd":
        return t.stride(0), t.stride(2), t.stride(1)
    return t.stride(0), t.stride(1), t.stride(2)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def key_block_lists(indices: torch.Tensor, nk: int, keep: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR transpose of the [B, H, nq, topk] selection: for each (batch·head, key block) the query blocks that
    selected it.

    Returns (ptr int32 [B·H·nk + 1], qblk int32 [B·H·nq·topk], order int32 [B·H, nk]): the query blocks of key
    block j of head bh are qblk[ptr[bh·nk + j] : ptr[bh·nk + j + 1]], ascending; order lists each head's key
    blocks by decreasing list length (the dk/dv launch order). keep: the selection's complement mask
    (api.complement_mask), when the caller has it already. Built from it (key_block_lists.py: zeros per column, a
    prefix sum, ranks by cumulative sums) on the indices' device: no host synchronisation (CUDA-graph safe),
    nothing larger than the router's scores (no N×nk tensor).
    """
    b, h, nq, topk = indices.shape
    bh = b * h
    dev = indices.device
    if keep is None:
        keep = complement_mask(indices, nk, NK_ALIGN)
    counts = (keep[:, :, :nk] == 0).sum(dim=1, dtype=torch.int32)  # [bh, nk]
    ptr = torch.zeros(bh * nk + 1, device=dev, dtype=torch.int32)
    torch.cumsum(counts.view(-1), dim=0, dtype=torch.int32, out=ptr[1:])
    qblk = _empty(bh * nq * topk, device=dev, dtype=torch.int32)
    key_block_fill_kernel[(triton.cdiv(nk, KEY_TILE), bh)](keep, ptr, qblk, nq, nk, keep.shape[-1], JT=KEY_TILE,
                                                           IT=QUERY_TILE, num_warps=4)
    order = torch.sort(counts, dim=1, descending=True, stable=True).indices.to(torch.int32)
    return ptr, qblk, order


@dataclass(frozen=True)
class BwdConfig:
    """Launch configuration of the dq and dk/dv kernels (the dq loop takes one selected key block a step)."""

    dq_warps: int
    dq_stages: int
    dkdv_warps: int
    dkdv_stages: int
    qs: int = 0  # dk/dv sparse loop: query rows per iteration (0: b_q; must divide b_q)
    dq_rows: int = 0  # dq kernel: query rows per program (0: b_q; must divide b_q)
    dq_tma: bool = False  # dq kernel: TMA tiles (sla2_bwd_tma.py)
    dkdv_tma: bool = False  # dk/dv kernel: TMA tiles
    # prologue: query rows a step and columns of dH_I a pass (powers of two ≥ 16; b_q / head_dim if larger).
    # H100, Wan-1.3B at 97% (kernels/README.md): 32 rows, all 128 columns, 4 warps, 1 stage 0.443 ms; 64 columns
    # 0.459; 16 rows 0.50–0.57; 8 warps 0.59; 2 stages 0.54 (spills); the one-pass kernel before it 0.553.
    prologue_rows: int = 32
    prologue_cols: int = 128
    prologue_warps: int = 4
    prologue_stages: int = 1


TUNED: dict = {}  # (block_q, block_k, head_dim) -> BwdConfig chosen by a benchmark (kernels/bench_train.py)


def default_config(block_q: int, block_k: int, head_dim: int) -> BwdConfig:
    if (block_q, block_k, head_dim) in TUNED:
        return TUNED[(block_q, block_k, head_dim)]
    warps = 8 if (block_q == 128 or head_dim == 128) else 4
    if (block_q, block_k, head_dim) == (128, 64, 128):
        # Measured on the H100 (kernels/README.md, Backward, 2026-11-27, Wan-1.3B at 97%): dk/dv 1.42 ms with 4
        # warps, 3 stages and 32 query rows per step vs 1.99 at 64 rows and 2.81 at 8 warps, 2 stages, 128 rows;
        # dq 1.23 ms with 64-row programs at 4 warps (two per SM) vs 1.51 for one 8-warp program per query block.
        # TMA tiles (device run 3 of the third session): dq 1.135 vs 1.218 ms, dk/dv 1.351 vs 1.399. (Those dq
        # times include the prologue, 0.55 ms then; the dq kernel alone: 0.606 ms with TMA tiles at 4 warps and
        # 2 stages, 0.603 at 1 stage, 0.68 at 8 warps, 0.71 pointer; fourth session, s4-run2.)
        return BwdConfig(4, 2, 4, 3, qs=32, dq_rows=64, dq_tma=True, dkdv_tma=True)
    return BwdConfig(warps, 2, warps, 2)


# Every buffer the backward allocates goes through these two names, so tests can poison them (NaN) without
# touching the torch module itself.
_empty = torch.empty
_empty_like = torch.empty_like

_WORKING: dict = {}  # (kernel, shape key, requested config) -> the first configuration that fit the GPU
LAST_COMPILED: dict = {}  # kernel name -> its last compiled kernel (registers, spills, shared memory) for benches


def _launch_with_fallback(name, kernel, grid, key, cfg, make_kwargs):
    """Launch with cfg, or with the first smaller configuration that fits (shared memory of the pipelined tiles)."""
    cached = _WORKING.get((name, key, cfg))
    for c in ([cached] if cached is not None else stage_fallbacks(cfg, f"{name}_stages")):
        args, kwargs = make_kwargs(c)
        try:
            LAST_COMPILED[name] = kernel[grid](*args, **kwargs)
        except OutOfResources:
            continue
        _WORKING[(name, key, cfg)] = c
        return c
    raise RuntimeError(f"sla2_kernels: no {name} backward configuration fits this GPU's resources (from {cfg})")


@dataclass
class BwdProblem:
    """Everything the two backward kernels share (built by `prepare`)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    do: torch.Tensor
    lse: torch.Tensor
    idx: torch.Tensor
    alpha: torch.Tensor  # fp32 [B, H, nq] view (stride 0 where it broadcasts)
    lin_state: tuple  # (H_I bf16 [BH, nq, D, D], Z_I fp32 [BH, nq, D]) of the forward; unused without a linear branch
    layout: str
    shape: tuple  # (B, H, N, D)
    block_q: int
    block_k: int
    cfg: BwdConfig
    dq: torch.Tensor | None = None
    dk: torch.Tensor | None = None
    dv: torch.Tensor | None = None
    dalpha: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    dh: torch.Tensor | None = None
    dz: torch.Tensor | None = None

    @property
    def nq(self) -> int:
        return triton.cdiv(self.shape[2], self.block_q)

    @property
    def nk(self) -> int:
        return triton.cdiv(self.shape[2], self.block_k)

    @property
    def linear(self) -> bool:
        return self.idx.shape[-1] < self.nk


def prepare(do, q, k, v, o, lse, indices, alpha, *, block_q, block_k, layout, h_i, z_i,
            config: BwdConfig | None = None) -> BwdProblem:
    if layout == "bnhd":
        bsz, n, heads, d = q.shape
    else:
        bsz, heads, n, d = q.shape
    q, k, v, o, do = (_last_dim_contiguous(t) for t in (q, k, v, o, do))
    nq = triton.cdiv(n, block_q)
    cfg = config or default_config(block_q, block_k, d)
    return BwdProblem(
        q, k, v, o, do, lse.contiguous(), indices.to(torch.int32).contiguous(),
        alpha.to(torch.float32).expand(bsz, heads, nq), (h_i, z_i),
        layout, (bsz, heads, n, d), block_q, block_k, cfg,
    )


def run_prologue(p: BwdProblem) -> None:
    """The prologue kernel: Δ, dα_I and (linear branch) dH_I, dZ_I and the linear dQ (into p.dq)."""
    bsz, heads, n, d = p.shape
    bh, nq = bsz * heads, p.nq
    dev = p.q.device
    p.dq = _empty_like(p.q, memory_format=torch.contiguous_format)
    p.delta = _empty(bsz, heads, n, device=dev, dtype=torch.float32)
    p.dalpha = _empty(bsz, heads, nq, device=dev, dtype=torch.float32)
    if p.linear:
        p.dh = _empty(bh, nq, d, d, device=dev, dtype=torch.bfloat16)  # the dh product's operand
        p.dz = _empty(bh, nq, d, device=dev, dtype=torch.float32)
    else:
        p.dh = p.dz = p.delta  # never read
    sa = p.alpha.stride()
    rs, dc = min(p.cfg.prologue_rows, p.block_q), min(p.cfg.prologue_cols, d)
    for name, value in (("prologue_rows", rs), ("prologue_cols", dc)):
        if value < 16 or value & (value - 1):
            raise ValueError(f"sla2_kernels: BwdConfig.{name}={value} must be a power of two ≥ 16")
    launch = dict(BQ=p.block_q, D=d, RS=rs, DC=dc, LINEAR=p.linear, INTERPRET=_interpreting(),
                  num_warps=p.cfg.prologue_warps, num_stages=p.cfg.prologue_stages)
    # ψ per query row, pass 1 to pass 2 of the prologue (freed with it; below the dk/dv step's peak)
    psi = _empty(bh, nq * p.block_q, d, device=dev, dtype=torch.bfloat16) if p.linear else p.delta
    LAST_COMPILED["prologue"] = sla2_bwd_prologue_kernel[(nq, bh)](
        p.q, p.o, p.do, p.dq,
        p.delta, p.alpha, *p.lin_state,
        p.dh, p.dz, p.dalpha, psi,
        *_bhn_strides(p.q, p.layout), *_bhn_strides(p.o, p.layout), *_bhn_strides(p.do, p.layout),
        *_bhn_strides(p.dq, p.layout), sa[0], sa[1], sa[2],
        n, heads, nq, **launch,
    )


def run_dq(p: BwdProblem) -> None:
    """Prologue (Δ, dα, linear dQ and dH_I, dZ_I) then the dq kernel (sparse dQ)."""
    run_prologue(p)
    run_dq_sparse(p)


def run_dq_sparse(p: BwdProblem) -> None:
    """The dq kernel: sparse dQ over the selected key blocks, added to the prologue's linear dQ."""
    bsz, heads, n, d = p.shape
    bh, nq = bsz * heads, p.nq
    sa = p.alpha.stride()

    def make(c):
        args = (
            p.q, p.k, p.v, p.do, p.dq,
            p.lse, p.delta, p.idx, p.alpha,
            *_bhn_strides(p.q, p.layout), *_bhn_strides(p.k, p.layout), *_bhn_strides(p.v, p.layout),
            *_bhn_strides(p.do, p.layout), *_bhn_strides(p.dq, p.layout),
            sa[0], sa[1], sa[2],
            n, heads, nq, p.idx.shape[-1], 1.0 / math.sqrt(d),
        )
        kw = dict(BQ=p.block_q, BK=p.block_k, D=d, BM=c.dq_rows or p.block_q,
                  LINEAR=p.linear, INTERPRET=_interpreting(),
                  num_warps=c.dq_warps, num_stages=c.dq_stages)
        return args, kw

    views = [bhnd_view(t, p.layout) for t in (p.q, p.k, p.v, p.do, p.dq)]

    def make_tma(c):
        rows = [c.dq_rows or p.block_q, p.block_k, p.block_k, c.dq_rows or p.block_q, c.dq_rows or p.block_q]
        args = (
            *(descriptor(t, r) for t, r in zip(views, rows)),
            p.lse, p.delta, p.idx, p.alpha, sa[0], sa[1], sa[2],
            n, heads, nq, p.idx.shape[-1], 1.0 / math.sqrt(d),
        )
        kw = dict(BQ=p.block_q, BK=p.block_k, D=d, BM=c.dq_rows or p.block_q, LINEAR=p.linear,
                  INTERPRET=_interpreting(), num_warps=c.dq_warps, num_stages=c.dq_stages)
        return args, kw

    key = (p.block_q, p.block_k, d, p.linear, p.q.dtype)
    rows = p.cfg.dq_rows or p.block_q
    if p.block_q % rows:
        raise ValueError(f"sla2_kernels: BwdConfig.dq_rows={rows} must divide block_q={p.block_q}")
    grid = (nq * (p.block_q // rows), bh)
    if p.cfg.dq_tma and tma_hardware(p.q.device) and tma_ready(*views):
        _launch_with_fallback("dq", sla2_bwd_dq_tma_kernel, grid, key, p.cfg, make_tma)
    else:
        _launch_with_fallback("dq", sla2_bwd_dq_kernel, grid, key, replace(p.cfg, dq_tma=False), make)


def run_dkdv(p: BwdProblem, release_dh: bool = False) -> None:
    """dh_j (one product), dZ_tot, the CSR key-block lists, then the dk/dv kernel. release_dh drops dH_I once
    dh_j exists, before dK and dV are allocated (100 MB less at the peak at the Wan-1.3B shape); benchmarks that
    call this twice on one problem keep it."""
    bsz, heads, n, d = p.shape
    bh, nq, nk = bsz * heads, p.nq, p.nk
    keep = complement_mask(p.idx, nk, NK_ALIGN)  # also the selection the CSR lists are built from
    ptr, qblk, order = key_block_lists(p.idx, nk, keep)
    if p.linear:
        # dh_j = Σ over the query blocks that did not select j of dH_I: the transposed complement mask times dH,
        # [nk, nq] × [nq, D²] per head on the tensor cores (instead of a D×D fp32 sum per key block over its
        # CSR list in the dk/dv kernel: 128 registers a thread at 4 warps, and the list's dH_I gathered).
        dhk = torch.bmm(keep.transpose(1, 2), p.dh.view(bh, nq, d * d))
        dztot = p.dz.sum(dim=1)
        if release_dh:
            p.dh = None
    else:
        dhk = dztot = p.delta
    del keep
    p.dk = _empty_like(p.k, memory_format=torch.contiguous_format)
    p.dv = _empty_like(p.v, memory_format=torch.contiguous_format)
    sa = p.alpha.stride()

    def make(c):
        args = (
            p.q, p.k, p.v, p.do, p.dk, p.dv,
            p.lse, p.delta, p.alpha,
            ptr, qblk, order,
            dhk, p.dz, dztot, dhk.shape[1] if p.linear else 0,
            *_bhn_strides(p.q, p.layout), *_bhn_strides(p.k, p.layout), *_bhn_strides(p.v, p.layout),
            *_bhn_strides(p.do, p.layout), *_bhn_strides(p.dk, p.layout), *_bhn_strides(p.dv, p.layout),
            sa[0], sa[1], sa[2],
            n, heads, nq, nk, 1.0 / math.sqrt(d),
        )
        kw = dict(BQ=p.block_q, BK=p.block_k, D=d, QS=c.qs or p.block_q, LINEAR=p.linear,
                  INTERPRET=_interpreting(), num_warps=c.dkdv_warps, num_stages=c.dkdv_stages)
        return args, kw

    views = [bhnd_view(t, p.layout) for t in (p.q, p.k, p.v, p.do, p.dk, p.dv)]

    def make_tma(c):
        qs = c.qs or p.block_q
        args = (
            *(descriptor(t, r) for t, r in zip(views, (qs, p.block_k, p.block_k, qs, p.block_k, p.block_k))),
            p.lse, p.delta, p.alpha,
            ptr, qblk, order,
            dhk, p.dz, dztot, dhk.shape[1] if p.linear else 0,
            sa[0], sa[1], sa[2],
            n, heads, nq, nk, 1.0 / math.sqrt(d),
        )
        kw = dict(BQ=p.block_q, BK=p.block_k, D=d, QS=qs, LINEAR=p.linear,
                  INTERPRET=_interpreting(), num_warps=c.dkdv_warps, num_stages=c.dkdv_stages)
        return args, kw

    key = (p.block_q, p.block_k, d, p.linear, p.q.dtype)
    if p.cfg.dkdv_tma and tma_hardware(p.q.device) and tma_ready(*views):
        _launch_with_fallback("dkdv", sla2_bwd_dkdv_tma_kernel, (nk, bh), key, p.cfg, make_tma)
    else:
        _launch_with_fallback("dkdv", sla2_bwd_dkdv_kernel, (nk, bh), key, replace(p.cfg, dkdv_tma=False), make)


def sla2_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    indices: torch.Tensor,
    alpha: torch.Tensor,
    *,
    block_q: int,
    block_k: int,
    layout: str,
    h_i: torch.Tensor,
    z_i: torch.Tensor,
    config: BwdConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv, dalpha) of SLA2 given the forward's o and lse (fp32 [B, H, N], sparse branch).

    q, k, v, o, do: [B, H, N, D] or [B, N, H, D] per `layout` (any strides with a unit last stride); the
    gradients come back in the same layout, contiguous. indices: [B, H, nq, topk] sorted per row. alpha:
    effective α (already 1 when topk = nk), broadcastable to [B, H, nq]. h_i, z_i: the linear branch's state the
    forward used (`api.linear_state`: bf16 [B·H, nq, D, D], fp32 [B·H, nq, D]; any tensors when topk = nk).
    dalpha is fp32 [B, H, nq] (reduce it to α's shape).
    For QAT pass the low-bit forward's o and lse: the backward is the bf16 one (straight-through).
    """
    p = prepare(do, q, k, v, o, lse, indices, alpha, block_q=block_q, block_k=block_k, layout=layout,
                h_i=h_i, z_i=z_i, config=config)
    run_dq(p)
    run_dkdv(p, release_dh=True)
    return p.dq, p.dk, p.dv, p.dalpha
