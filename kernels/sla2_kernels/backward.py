"""The SLA2 backward's host side (docs/method.md, Backward): buffers, the launch order of the dq, linear and dk/dv
kernels (sla2_bwd.py, TMA twins in sla2_bwd_tma.py), and the dh product between them. The formulas are in
sla2_bwd.py's docstring.

`sla2_backward` is the public entry; `prepare` and the `run_*` steps are what the benchmarks time one by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from . import launch, layouts
from . import gluon_tiles
from . import sla2_bwd_dq_gluon as dq_gluon
from .backward_state import backward_linear_state
from .checks import check_sparse_output
from .forward import effective_alpha
from .launch import cdiv
from .layouts import NK_ALIGN, bhn_strides, bhnd_view, descriptor, dims, last_dim_contiguous
from .selection import complement_mask, key_block_lists
from .sla2_bwd import sla2_bwd_dkdv_kernel, sla2_bwd_dq_kernel, sla2_bwd_linear_kernel
from .sla2_bwd_tma import sla2_bwd_dkdv_tma_kernel, sla2_bwd_dq_tma_kernel
from .tuning import BwdConfig, default_bwd_config


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
    lin_state: tuple  # (H_I fp32 [BH, nq, D, D], Z_I fp32 [BH, nq, D]), backward_state.py; unused without linear
    layout: str
    shape: tuple  # (B, H, N, D)
    block_q: int
    block_k: int
    cfg: BwdConfig
    dq: torch.Tensor | None = None
    dk: torch.Tensor | None = None
    dv: torch.Tensor | None = None
    dalpha: torch.Tensor | None = None
    # fp32 [B·H, 2, nq·b_q]: per query row the log2 normaliser of α·P and Ds = dO·O_s (the dq kernel's row_stats)
    rows: torch.Tensor | None = None
    dh: torch.Tensor | None = None
    dz: torch.Tensor | None = None
    keep: torch.Tensor | None = None  # the selection's complement mask, when the linear state was built with it
    # the forward's sparse output: with quant (QAT) the low-bit O_s^q, dα's sparse term (linear kernel); without,
    # the bf16 O_s, from which the dq kernel knows Δ before its loop (DELTA_KNOWN)
    o_s: torch.Tensor | None = None
    quant: bool = False

    @property
    def nq(self) -> int:
        return cdiv(self.shape[2], self.block_q)

    @property
    def nk(self) -> int:
        return cdiv(self.shape[2], self.block_k)

    @property
    def linear(self) -> bool:
        return self.idx.shape[-1] < self.nk

    @property
    def delta_known(self) -> bool:
        """The bf16 O_s: the dq kernel takes Δ = α dO·O_s before its loop."""
        return self.o_s is not None and not self.quant

    @property
    def dalpha_from_os(self) -> bool:
        """QAT's O_s^q: the linear kernel takes dα's sparse term from it (the bf16 O_s leaves it to Ds)."""
        return self.o_s is not None and self.quant


def prepare(do, q, k, v, o, lse, indices, alpha, *, block_q, block_k, layout, h_i, z_i, keep=None, o_s=None,
            quant: bool = False, config: BwdConfig | None = None) -> BwdProblem:
    """The problem of one backward call; alpha: effective α (forward.effective_alpha), broadcastable to [B, H, nq];
    h_i, z_i, keep: backward_state.backward_linear_state's (keep None: run_dkdv builds the mask itself); o_s: the
    forward's sparse output (quant: the low-bit forward's O_s^q) or None."""
    bsz, heads, n, d = dims(q, layout)[0]
    q, k, v, o, do = (last_dim_contiguous(t) for t in (q, k, v, o, do))
    o_s = None if o_s is None else last_dim_contiguous(o_s)
    nq = cdiv(n, block_q)
    cfg = config or default_bwd_config(block_q, block_k, d)
    return BwdProblem(
        q, k, v, o, do, lse.contiguous(), indices.to(torch.int32).contiguous(),
        alpha.to(torch.float32).expand(bsz, heads, nq), (h_i, z_i),
        layout, (bsz, heads, n, d), block_q, block_k, cfg, keep=keep, o_s=o_s, quant=quant,
    )


def run_dq(p: BwdProblem) -> None:
    """The dq kernel (sparse dQ, Ds) then, with a linear branch, the linear kernel (dα, dH_I, dZ_I, linear dQ)."""
    run_dq_sparse(p)
    if p.linear:
        run_linear(p)
    else:
        p.dalpha = torch.zeros(p.shape[0], p.shape[1], p.nq, device=p.q.device, dtype=torch.float32)  # α is fixed at 1


def run_dq_sparse(p: BwdProblem) -> None:
    """The dq kernel: sparse dQ over the selected key blocks (into p.dq) and the row statistics (into p.rows).
    With the bf16 forward's O_s (p.delta_known) the kernel reads it in O's place and knows Δ before its loop."""
    bsz, heads, n, d = p.shape
    o = p.o_s if p.delta_known else p.o
    bh, nq = bsz * heads, p.nq
    sa = p.alpha.stride()
    p.dq = launch.empty_like(p.q, memory_format=torch.contiguous_format)
    p.rows = launch.empty(bh, 2, nq * p.block_q, device=p.q.device, dtype=torch.float32)

    def make(c):
        args = (
            p.q, p.k, p.v, o, p.do, p.dq,
            p.lse, p.rows, p.idx, p.alpha,
            *bhn_strides(p.q, p.layout), *bhn_strides(p.k, p.layout), *bhn_strides(p.v, p.layout),
            *bhn_strides(o, p.layout), *bhn_strides(p.do, p.layout), *bhn_strides(p.dq, p.layout),
            sa[0], sa[1], sa[2],
            n, heads, nq, p.idx.shape[-1], 1.0 / math.sqrt(d),
        )
        kw = dict(BQ=p.block_q, BK=p.block_k, D=d, BM=c.dq_rows or p.block_q,
                  LINEAR=p.linear, INTERPRET=launch.interpreting(), DELTA_KNOWN=p.delta_known,
                  num_warps=c.dq_warps, num_stages=c.dq_stages)
        return args, kw

    views = [bhnd_view(t, p.layout) for t in (p.q, p.k, p.v, o, p.do, p.dq)]

    def make_tma(c):
        bm = c.dq_rows or p.block_q
        args = (
            *(descriptor(t, r) for t, r in zip(views, [bm, p.block_k, p.block_k, bm, bm, bm])),
            p.lse, p.rows, p.idx, p.alpha, sa[0], sa[1], sa[2],
            n, heads, nq, p.idx.shape[-1], 1.0 / math.sqrt(d),
        )
        kw = dict(BQ=p.block_q, BK=p.block_k, D=d, BM=bm, LINEAR=p.linear, DELTA_KNOWN=p.delta_known,
                  INTERPRET=launch.interpreting(), num_warps=c.dq_warps, num_stages=c.dq_stages)
        return args, kw

    tma = layouts.tma_hardware(p.q.device) and layouts.tma_ready(*views)
    if tma and gluon_dq_suits(p, views):
        rows = dq_gluon.GLUON_DQ_ROWS
        descs = (gluon_tiles.descriptor(t, r) for t, r in zip(views, [rows, p.block_k, p.block_k, rows, rows, rows]))
        launch.run("dq", dq_gluon.sla2_bwd_dq_gluon_kernel, (nq * (p.block_q // rows), bh),
                   *descs, p.lse, p.rows, p.idx, p.alpha, sa[0], sa[1], sa[2],
                   n, heads, nq, p.idx.shape[-1], 1.0 / math.sqrt(d),
                   BQ=p.block_q, BK=p.block_k, D=d, BM=rows, LINEAR=p.linear, DELTA_KNOWN=p.delta_known,
                   OVERLAP=p.cfg.dq_gluon_overlap, num_warps=dq_gluon.GLUON_DQ_WARPS)
        return
    key = (p.block_q, p.block_k, d, p.linear, p.q.dtype, p.delta_known)
    rows = p.cfg.dq_rows or p.block_q
    if p.block_q % rows:
        raise ValueError(f"sla2_kernels: BwdConfig.dq_rows={rows} must divide block_q={p.block_q}")
    grid = (nq * (p.block_q // rows), bh)
    if p.cfg.dq_tma and tma:
        launch.with_fallback("dq", sla2_bwd_dq_tma_kernel, grid, key, p.cfg, make_tma, "dq_stages")
    else:
        launch.with_fallback("dq", sla2_bwd_dq_kernel, grid, key, replace(p.cfg, dq_tma=False), make, "dq_stages")


def gluon_dq_suits(p: BwdProblem, views) -> bool:
    """Whether the Gluon dq kernel takes a problem whose tiles suit TMA: asked for (BwdConfig.dq_gluon), Gluon's own
    conditions (gluon_tiles.suits), and the sizes its layouts and shared memory are built for: head_dim 64 or 128,
    b_k 64 (two stages of K and V beside three query tiles, two programs an SM), b_q a multiple of its 64-row
    programs."""
    return (p.cfg.dq_gluon and p.shape[3] in (64, 128) and p.block_k == 64
            and p.block_q % dq_gluon.GLUON_DQ_ROWS == 0 and gluon_tiles.suits(p.q.device, *(t.dtype for t in views)))


def run_linear(p: BwdProblem) -> None:
    """The linear kernel, after the dq kernel: dα_I, dH_I, dZ_I, and the linear dQ added into p.dq."""
    bsz, heads, n, d = p.shape
    bh, nq = bsz * heads, p.nq
    dev = p.q.device
    p.dalpha = launch.empty(bsz, heads, nq, device=dev, dtype=torch.float32)
    p.dh = launch.empty(bh, nq, d, d, device=dev, dtype=torch.bfloat16)  # the dh product's operand
    p.dz = launch.empty(bh, nq, d, device=dev, dtype=torch.float32)
    sa = p.alpha.stride()
    rs, dc = min(p.cfg.linear_rows, p.block_q), min(p.cfg.linear_cols, d)
    for name, value in (("linear_rows", rs), ("linear_cols", dc)):
        if value < 16 or value & (value - 1):
            raise ValueError(f"sla2_kernels: BwdConfig.{name}={value} must be a power of two ≥ 16")
    # ψ per query row, pass 1 to pass 2 of the linear kernel (freed with it; below the dk/dv step's peak)
    psi = launch.empty(bh, nq * p.block_q, d, device=dev, dtype=torch.bfloat16)
    o_s = p.o_s if p.dalpha_from_os else p.o  # without O_s^q the kernel does not read it
    launch.run(
        "linear", sla2_bwd_linear_kernel, (nq, bh),
        p.q, p.do, p.dq, o_s,
        p.rows, p.alpha, *p.lin_state,
        p.dh, p.dz, p.dalpha, psi,
        *bhn_strides(p.q, p.layout), *bhn_strides(p.do, p.layout), *bhn_strides(p.dq, p.layout),
        *bhn_strides(o_s, p.layout),
        sa[0], sa[1], sa[2],
        n, heads, nq,
        BQ=p.block_q, D=d, RS=rs, DC=dc, DALPHA_FROM_OS=p.dalpha_from_os, INTERPRET=launch.interpreting(),
        num_warps=p.cfg.linear_warps, num_stages=p.cfg.linear_stages,
    )


def run_dkdv(p: BwdProblem, release_dh: bool = False) -> None:
    """dh_j (one product), dZ_tot, the CSR key-block lists, then the dk/dv kernel. release_dh drops dH_I once
    dh_j exists, before dK and dV are allocated (100 MB less at the peak at the Wan-1.3B shape); benchmarks that
    call this twice on one problem keep it."""
    bsz, heads, n, d = p.shape
    bh, nq, nk = bsz * heads, p.nq, p.nk
    # the complement mask the linear state was summed with, or a new one; the CSR lists are built from it
    keep = p.keep if p.keep is not None else complement_mask(p.idx, nk, NK_ALIGN)
    p.keep = None
    ptr, qblk, order = key_block_lists(p.idx, nk, keep)
    if p.linear:
        # dh_j = Σ over the query blocks that did not select j of dH_I: the transposed complement mask times dH,
        # [nk, nq] × [nq, D²] per head on the tensor cores (instead of a D×D fp32 sum per key block over its
        # CSR list in the dk/dv kernel: 128 registers a thread at 4 warps, and the list's dH_I gathered).
        dhk = torch.bmm(keep.transpose(1, 2), p.dh.view(bh, nq, d * d))
        dztot = p.dz.sum(dim=1)
        if release_dh:
            p.dh = None
        dz = p.dz
    else:
        dhk = dztot = dz = p.rows  # never read
    del keep
    p.dk = launch.empty_like(p.k, memory_format=torch.contiguous_format)
    p.dv = launch.empty_like(p.v, memory_format=torch.contiguous_format)

    def make(c):
        args = (
            p.q, p.k, p.v, p.do, p.dk, p.dv,
            p.rows,
            ptr, qblk, order,
            dhk, dz, dztot, dhk.shape[1] if p.linear else 0,
            *bhn_strides(p.q, p.layout), *bhn_strides(p.k, p.layout), *bhn_strides(p.v, p.layout),
            *bhn_strides(p.do, p.layout), *bhn_strides(p.dk, p.layout), *bhn_strides(p.dv, p.layout),
            n, heads, nq, nk, 1.0 / math.sqrt(d),
        )
        kw = dict(BQ=p.block_q, BK=p.block_k, D=d, QS=c.qs or p.block_q, LINEAR=p.linear,
                  INTERPRET=launch.interpreting(), num_warps=c.dkdv_warps, num_stages=c.dkdv_stages)
        return args, kw

    views = [bhnd_view(t, p.layout) for t in (p.q, p.k, p.v, p.do, p.dk, p.dv)]

    def make_tma(c):
        qs = c.qs or p.block_q
        args = (
            *(descriptor(t, r) for t, r in zip(views, (qs, p.block_k, p.block_k, qs, p.block_k, p.block_k))),
            descriptor(p.rows, 1, qs),
            ptr, qblk, order,
            dhk, dz, dztot, dhk.shape[1] if p.linear else 0,
            n, heads, nq, nk, 1.0 / math.sqrt(d),
        )
        kw = dict(BQ=p.block_q, BK=p.block_k, D=d, QS=qs, LINEAR=p.linear, INTERPRET=launch.interpreting(),
                  REGISTER_KV=c.dkdv_register_kv, num_warps=c.dkdv_warps, num_stages=c.dkdv_stages)
        return args, kw

    key = (p.block_q, p.block_k, d, p.linear, p.q.dtype)
    if p.cfg.dkdv_tma and layouts.tma_hardware(p.q.device) and layouts.tma_ready(*views):
        launch.with_fallback("dkdv", sla2_bwd_dkdv_tma_kernel, (nk * bh,), key, p.cfg, make_tma, "dkdv_stages")
    else:
        launch.with_fallback("dkdv", sla2_bwd_dkdv_kernel, (nk * bh,), key, p.cfg.pointer_dkdv(), make, "dkdv_stages")


def sla2_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    indices: torch.Tensor,
    alpha,
    *,
    block_q: int,
    block_k: int,
    layout: str,
    o_s: torch.Tensor | None = None,
    quant: bool | None = None,
    config: BwdConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv, dalpha) of SLA2 given the forward's o and lse (fp32 [B, H, N], sparse branch).

    q, k, v, o, do: [B, H, N, D] or [B, N, H, D] per `layout` (any strides with a unit last stride); the
    gradients come back in the same layout, contiguous. indices: [B, H, nq, topk] sorted per row. alpha: the
    raw α, broadcastable to [B, H, nq] (made effective here: 1 when topk = nk). The linear branch's state is
    rebuilt here from k, v with fp32 sums (backward_state.py: one pass over K and V and one product). dalpha is
    fp32 [B, H, nq]: reduce it to α's shape. No term divides by α: every gradient is finite and accurate at α = 0.
    o_s, sla2_forward's third output, with quant saying which forward made it: for QAT (quant=True) the low-bit
    forward's o, lse and o_s; the backward is the bf16 one (straight-through for q, k, v) and dα, from o_s, the
    exact derivative of the low-bit forward. From the bf16 forward (quant=False), o_s lets the dq kernel know
    Δ = α dO·O_s before its loop and skip one of its four products a step; without it Δ is summed in the loop.
    """
    if o_s is not None:
        check_sparse_output(o_s, q, quant)
    a3 = effective_alpha(alpha, q, indices, block_q, block_k, layout)
    n = dims(q, layout)[0][2]
    if indices.shape[-1] >= cdiv(n, block_k):  # no linear branch: its state is never read
        lin_state = (a3, a3, None)
    else:
        lin_state = backward_linear_state(k, v, indices, block_q=block_q, block_k=block_k, layout=layout)
    p = prepare(do, q, k, v, o, lse, indices, a3, block_q=block_q, block_k=block_k, layout=layout,
                h_i=lin_state[0], z_i=lin_state[1], keep=lin_state[2], o_s=o_s, quant=bool(quant), config=config)
    del lin_state
    run_dq(p)
    p.lin_state = None  # the fp32 H_I is read once: freed before dK and dV are allocated
    run_dkdv(p, release_dh=True)
    return p.dq, p.dk, p.dv, p.dalpha
