"""The SLA2 forward's host side: the linear branch's state, the choice of kernel (TMA, pointer, low-bit) and its
launch.

sla2_forward, which the training op runs, validates its inputs once (`check_forward`) and then calls only
unchecked parts (kv_state.build_state, `run_forward`).
Kernels: sla2_fwd_tma.py (bf16/fp16; its Gluon twin sla2_fwd_gluon.py, FwdConfig.gluon, the bf16 default where it
suits the call), sla2_fwd.py (where a tensor or the GPU does not suit TMA),
sla2_fwd_lowbit.py (quant=True), sla2_fwd_lowbit_tma.py (quant=True with a TMA configuration); query_pass.py before
the low-bit TMA kernel (Q̂) and, with FwdConfig.linear_pass, before either TMA kernel (the linear branch's O_l);
complement.py for the selection's complement and Z_I.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import gluon_tiles, launch, layouts, sla2_fwd_gluon
from .checks import alpha_view, check_block, check_indices, check_lin_state, check_qkv, check_state
from .kv_state import KVState, build_state
from .launch import cdiv
from .layouts import bhnd_view, descriptor, dims
from .query_pass import query_pass_kernel
from .selection import complement_mask
from .sla2_fwd import sla2_fwd_kernel
from .sla2_fwd_lowbit import sla2_fwd_lowbit_kernel
from .sla2_fwd_lowbit_tma import sla2_fwd_lowbit_tma_kernel
from .sla2_fwd_tma import sla2_fwd_tma_kernel
from .tuning import EPI_CHUNKS, QUERY_PASS_WARPS, FwdConfig, default_fwd_config, pointer_config


@dataclass(frozen=True)
class ForwardProblem:
    """A validated forward call: sizes, the inputs' element strides, the selection as int32 and α as a view."""

    B: int
    H: int
    N: int
    D: int
    block_q: int
    block_k: int
    nq: int
    nk: int
    topk: int
    layout: str
    strides: dict  # "q", "k", "v" -> (batch, head, token, dim) strides
    idx: torch.Tensor  # int32 [B, H, nq, topk], contiguous
    alpha: torch.Tensor  # fp32 [B, H, nq] view

    @property
    def linear(self) -> bool:
        """Whether anything is left for the linear branch (every block selected: none, α = 1)."""
        return self.topk < self.nk


def check_forward(q, k, v, indices, alpha, block_q: int, block_k: int, layout: str) -> ForwardProblem:
    """Every check of a forward call, once (checks.py; one ValueError line each)."""
    bq, bk = check_block("block_q", block_q), check_block("block_k", block_k)
    (B, H, N, D), strides = check_qkv({"q": q, "k": k, "v": v}, layout)
    nq, nk = cdiv(N, bq), cdiv(N, bk)
    topk = check_indices(indices, B, H, nq, nk, q.device)
    idx = indices if indices.dtype == torch.int32 and indices.is_contiguous() else indices.to(torch.int32).contiguous()
    return ForwardProblem(B, H, N, D, bq, bk, nq, nk, topk, layout, strides, idx, alpha_view(alpha, B, H, nq, q.device))


def effective_alpha(alpha, q: torch.Tensor, indices: torch.Tensor, block_q: int, block_k: int, layout: str):
    """α as fp32 [B, H, nq] (a broadcasting view), forced to 1 when every key block is selected: α stands for the
    softmax mass on the selected blocks, which is then exactly 1 (docs/method.md, α)."""
    b, h, n, _ = dims(q, layout)[0]
    nq, nk = cdiv(n, block_q), cdiv(n, block_k)
    if indices.shape[-1] >= nk:
        return torch.ones((), device=q.device, dtype=torch.float32).expand(b, h, nq)
    return alpha_view(alpha, b, h, nq, q.device)


def linear_state(indices: torch.Tensor, kv_state: KVState, *, block_q: int):
    """The linear branch's per-query-block state (docs/method.md, Linear branch): (H_I bf16 [BH, nq, D, D], Z_I
    fp32 [BH, nq, D]), H_I = Σ_{j not selected by I} h_j and Z_I likewise.

    H_I is one batched product (1 − selection) @ h on the tensor cores, [nq, nk] × [nk, D²] per head (bf16
    operands, fp32 accumulation): ~50 GFLOP at the Wan-1.3B shape instead of gathering every selected block's
    tiles per query block. The 0/1 mask has the shape of the router's scores, [B·H, nq, nk] (bf16); it and Z_I
    come from one launch (complement.py). Two launches in all.
    """
    B, H, N, D = kv_state.shape
    BH, nq, nk = B * H, cdiv(N, block_q), cdiv(N, kv_state.block_k)
    # the mask's padding columns meet h's zero padding blocks
    keep, z_i = complement_mask(indices, nk, z=(kv_state.zblk, kv_state.ztot))
    h_i = torch.bmm(keep, kv_state.hblk.view(BH, keep.shape[-1], D * D)).view(BH, nq, D, D)
    return h_i, z_i


def sla2_forward(q, k, v, indices, alpha, *, block_q: int, block_k: int, quant: bool, layout: str,
                 kv_state: KVState | None = None, config: FwdConfig | None = None, linear: bool | None = None,
                 lin_state: tuple | None = None, sparse_out: bool = True):
    """SLA2 forward: (o in q's layout and dtype, lse fp32 [B, H, N], o_s).

    indices: int [B, H, nq, topk], each row's selected key blocks (ascending, distinct, in [0, nk));
    alpha: fp32 broadcastable to [B, H, nq]. `linear=False` drops the linear branch (benchmarks only).
    lin_state: (H_I, Z_I) from `linear_state` for these indices, if the caller already has them.
    config: the launch configuration (default: tuning.default_fwd_config).
    o_s: with sparse_out, the sparse branch's output (like o), which sla2_backward reads: with quant the low-bit
    O_s^q, QAT's dα; in bf16 O_s, from which the dq kernel knows Δ before its loop. Otherwise an empty tensor
    (sparse_out=False: one write the size of o less, where no backward will run, or none through α in QAT).
    """
    p = check_forward(q, k, v, indices, alpha, block_q, block_k, layout)
    if kv_state is None:
        kv_state = build_state(k, v, (p.B, p.H, p.N, p.D), p.strides["k"], p.strides["v"], p.block_k, layout, quant)
    else:
        check_state(kv_state, k, p.block_k, layout, quant)
    linear = p.linear if linear is None else linear
    if linear and lin_state is not None:
        check_lin_state(lin_state, p.B * p.H, p.nq, p.D, q.device)
        lin_state = tuple(t.contiguous() for t in lin_state)
    elif linear:
        lin_state = linear_state(p.idx, kv_state, block_q=p.block_q)
    return run_forward(p, q, k, v, p.alpha, kv_state, lin_state if linear else None, quant, config, sparse_out)


def query_pass(q: torch.Tensor, p: ForwardProblem, o: torch.Tensor, lse: torch.Tensor, lin_state, kmean, quant: bool,
               warps: int = QUERY_PASS_WARPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The pass over Q before a TMA forward kernel (query_pass.py; the tensors suit TMA): with lin_state (H_I, Z_I),
    O_l into o; with quant, the lse shift into lse and (returned) Q̂ int8 [BH, nq·b_q, D] (padded rows 0) and s_q
    fp32 [BH, nq]; without quant, two placeholders."""
    BH, nq, bq, D = p.B * p.H, p.nq, p.block_q, p.D
    q8 = launch.empty(BH, nq * bq, D, device=q.device, dtype=torch.int8) if quant else lse
    sq = launch.empty(BH, nq, device=q.device, dtype=torch.float32) if quant else lse
    q_desc = descriptor(bhnd_view(q, p.layout), bq)
    # never read without the linear branch (o_desc, h_desc) or quant (q8_desc): q's descriptor stands in
    o_desc, h_desc, z_i = ((descriptor(bhnd_view(o, p.layout), bq), descriptor(lin_state[0].view(BH * nq, D, D), D),
                            lin_state[1]) if lin_state else (q_desc, q_desc, lse))
    launch.run("query_pass", query_pass_kernel, (nq, BH), q_desc, o_desc, h_desc, z_i,
               descriptor(q8, bq) if quant else q_desc, sq, lse, lse if kmean is None else kmean,
               p.N, p.H, nq, 1.0 / math.sqrt(D), BQ=bq, D=D, LINEAR=lin_state is not None, QUANT=quant,
               INTERPRET=launch.interpreting(), num_warps=warps)
    return q8, sq


def fwd_gluon_suits(cfg: FwdConfig, p: ForwardProblem, q: torch.Tensor, sparse_out: bool) -> bool:
    """Whether the Gluon forward (sla2_fwd_gluon.py) takes a bf16 call that run_forward has given TMA tiles (cfg.tma
    after its check of the GPU and the tensors): asked for (FwdConfig.gluon), what it implements (whole query blocks
    a program, the linear branch in the epilogue, no O_s stored), the sizes its layouts and shared memory are built
    for (b_q 64 or 128, head_dim 64 or 128, b_k 64: two stages of K and V beside Q, two programs an SM, or the
    overlapped loop's three and one, and H_I's row pieces fill one stage's buffers), bf16 (H_I's dtype, loaded into
    K's buffers), and Gluon's own conditions."""
    return (cfg.gluon and cfg.tma and not cfg.linear_pass and cfg.rows in (0, p.block_q) and not sparse_out
            and q.dtype == torch.bfloat16 and p.block_q in (64, 128) and p.D in (64, 128) and p.block_k == 64
            and gluon_tiles.suits(q.device, q.dtype))


def run_forward(p: ForwardProblem, q, k, v, alpha3, kv_state: KVState, lin_state, quant: bool,
                config: FwdConfig | None = None, sparse_out: bool = True):
    """The main kernel's launch on a validated problem: (o, lse, o_s). lin_state None: no linear branch (α = 1);
    o_s as sla2_forward returns it."""
    B, H, N, D, bq, bk, nq, nk, topk, layout = p.B, p.H, p.N, p.D, p.block_q, p.block_k, p.nq, p.nk, p.topk, p.layout
    BH, idx, strides, linear = B * H, p.idx, p.strides, lin_state is not None
    cfg = config or default_fwd_config(bq, bk, D, quant)
    h_i, z_i = lin_state if linear else (alpha3, alpha3)  # never read without the linear branch
    o = launch.empty_like(q)
    # o_s has o's strides (both empty_like(q)): the pointer kernels address them with one set
    o_s = launch.empty_like(q) if sparse_out else q.new_empty(0)
    os_arg = o_s if sparse_out else o  # the kernels' O_s argument: not written without STORE_OS
    so = dims(o, layout)[1]
    lse = launch.empty(B, H, N, device=q.device, dtype=torch.float32)
    s = kv_state
    if cfg.tma and (not layouts.tma_hardware(q.device)
                    or not layouts.tma_ready(*(bhnd_view(t, layout) for t in (q, k, v, o, o_s) if t.numel()),
                                             *((h_i,) if linear else ()))):
        # The GPU has no TMA, or the tensors' strides or alignment do not suit it. A caller's own configuration
        # keeps its warps and stages; the default becomes the pointer one.
        cfg = cfg.flipped("tma") if config is not None else pointer_config(bq, D)
    rows = cfg.rows or bq  # query rows a program (a TMA kernel may take a query block in several)
    if bq % rows:
        raise ValueError(f"sla2_kernels: FwdConfig.rows={rows} must divide block_q={bq}")
    scale = 1.0 / math.sqrt(D)
    interpret = launch.interpreting()

    def common(c):
        kw = dict(BQ=bq, BK=bk, D=D, LINEAR=linear, INTERPRET=interpret, num_warps=c.num_warps,
                  num_stages=c.num_stages)
        if c.maxnreg:
            kw["maxnreg"] = c.maxnreg
        return kw

    if not quant and fwd_gluon_suits(cfg, p, q, sparse_out):
        q4, o4 = bhnd_view(q, layout), bhnd_view(o, layout)
        h4 = h_i.view(BH * nq, 1, D, D) if linear else q4  # never read without the linear branch
        tiles = ((q4, bq), (bhnd_view(k, layout), bk), (bhnd_view(v, layout), bk), (o4, bq), (h4, bk))
        warps, stages = sla2_fwd_gluon.launch_shape(bq, cfg.gluon_overlap)
        launch.run("sla2_fwd_gluon", sla2_fwd_gluon.sla2_fwd_gluon_kernel, (nq, BH),
                   *(gluon_tiles.descriptor(t, r) for t, r in tiles), idx, alpha3, lse, z_i, *alpha3.stride(),
                   N, H, nq, topk, scale, BQ=bq, BK=bk, D=D, LINEAR=linear, OVERLAP=cfg.gluon_overlap, WARPS=warps,
                   STAGES=stages, num_warps=warps)
        return o, lse, o_s
    if cfg.tma:
        # Both TMA kernels: Q and O tiles; with the linear branch in the epilogue (not linear_pass) its Q column
        # pieces and H_I rows, otherwise never read (q_desc stands in; no H_I placeholder to fill).
        q4, o4 = bhnd_view(q, layout), bhnd_view(o, layout)
        q_desc, o_desc = descriptor(q4, rows), descriptor(o4, rows)
        os_desc = descriptor(bhnd_view(o_s, layout), rows) if sparse_out else o_desc
        in_epilogue = linear and not cfg.linear_pass
        epilogue = ((descriptor(q4, rows, D // EPI_CHUNKS), descriptor(h_i.view(BH * nq, D, D), D // EPI_CHUNKS))
                    if in_epilogue else (q_desc, q_desc))
        if quant or (linear and cfg.linear_pass):
            q8, sq = query_pass(q, p, o, lse, lin_state if linear and cfg.linear_pass else None,
                                s.kmean if quant else None, quant)
        tma_kw = dict(EPI_CHUNKS=EPI_CHUNKS, BM=rows, LINEAR_PASS=cfg.linear_pass)
    if quant and cfg.tma:
        name, kernel = "sla2_fwd_lowbit_tma", sla2_fwd_lowbit_tma_kernel
        args = (q_desc, o_desc, os_desc, *epilogue,
                descriptor(q8, rows), descriptor(s.k8, bk), descriptor(s.v8t, D, bk),
                idx, alpha3, lse, z_i, sq, s.sk, s.sv, *alpha3.stride(), N, H, nq, nk, topk, scale)
        make = lambda c: (args, dict(STORE_OS=sparse_out, **tma_kw, **common(c)))  # noqa: E731
    elif quant:
        name, kernel = "sla2_fwd_lowbit", sla2_fwd_lowbit_kernel
        args = (q, idx, alpha3, o, os_arg, lse, h_i, z_i, s.k8, s.sk, s.v8t, s.sv, s.kmean,
                *strides["q"], *so, *alpha3.stride(), N, H, nq, nk, topk, scale)
        make = lambda c: (args, dict(EXACT_MAX=c.exact_max, STORE_OS=sparse_out, **common(c)))  # noqa: E731
    elif cfg.tma:
        name, kernel = "sla2_fwd_tma", sla2_fwd_tma_kernel
        args = (q_desc, *(descriptor(bhnd_view(t, layout), bk) for t in (k, v)), o_desc, os_desc, *epilogue,
                idx, alpha3, lse, z_i, *alpha3.stride(), N, H, nq, topk, scale)
        make = lambda c: (args, dict(STORE_OS=sparse_out, **tma_kw, **common(c)))  # noqa: E731
    else:
        name, kernel = "sla2_fwd", sla2_fwd_kernel
        args = (q, k, v, idx, alpha3, o, os_arg, lse, h_i, z_i,
                *strides["q"], *strides["k"], *strides["v"], *so, *alpha3.stride(), N, H, nq, topk, scale)
        make = lambda c: (args, dict(STORE_OS=sparse_out, **common(c)))  # noqa: E731
    launch.with_fallback(name, kernel, (nq * (bq // rows), BH), (bq, bk, D, q.dtype, linear), cfg, make)
    return o, lse, o_s
