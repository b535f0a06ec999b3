"""The SLA2 forward's host side: the linear branch's state, the choice of kernel (TMA, pointer, low-bit) and its
launch, and the forward-with-state that the training op runs.

Kernels: sla2_fwd_tma.py (bf16/fp16 default), sla2_fwd.py (where a tensor or the GPU does not suit TMA),
sla2_fwd_lowbit.py (quant=True); complement_z.py for Z_I.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import triton

from . import launch, layouts
from .checks import alpha_view, check_block, check_indices, check_lin_state, check_qkv, check_state
from .complement_z import complement_z_kernel
from .layouts import bhnd_view, descriptor, dims
from .kv_state import KVState, precompute
from .selection import complement_mask
from .sla2_fwd import sla2_fwd_kernel
from .sla2_fwd_lowbit import sla2_fwd_lowbit_kernel
from .sla2_fwd_tma import sla2_fwd_tma_kernel
from .tuning import EPI_CHUNKS, Z_GATHER, FwdConfig, default_fwd_config, pointer_config


def effective_alpha(alpha, q: torch.Tensor, indices: torch.Tensor, block_q: int, block_k: int, layout: str):
    """α as fp32 [B, H, nq] (a broadcasting view), forced to 1 when every key block is selected: α stands for the
    softmax mass on the selected blocks, which is then exactly 1 (docs/method.md, α)."""
    b, h, n, _ = dims(q, layout)[0]
    nq, nk = triton.cdiv(n, block_q), triton.cdiv(n, block_k)
    if indices.shape[-1] >= nk:
        return torch.ones((), device=q.device, dtype=torch.float32).expand(b, h, nq)
    return alpha_view(alpha, b, h, nq, q.device)


def linear_state(indices: torch.Tensor, kv_state: KVState, *, block_q: int):
    """The linear branch's per-query-block state (docs/method.md, Linear branch): (H_I bf16 [BH, nq, D, D], Z_I
    fp32 [BH, nq, D]), H_I = Σ_{j not selected by I} h_j and Z_I likewise.

    H_I is one batched product (1 − selection) @ h on the tensor cores, [nq, nk] × [nk, D²] per head (bf16
    operands, fp32 accumulation): ~50 GFLOP at the Wan-1.3B shape instead of gathering every selected block's
    tiles per query block. The 0/1 mask has the shape of the router's scores, [B·H, nq, nk] (bf16).
    """
    B, H, N, D = kv_state.shape
    BH, nq, nk = B * H, triton.cdiv(N, block_q), triton.cdiv(N, kv_state.block_k)
    idx = indices.reshape(BH, nq, indices.shape[-1])
    keep = complement_mask(idx, nk)  # its padding columns meet h's zero padding blocks
    h_i = torch.bmm(keep, kv_state.hblk.view(BH, keep.shape[-1], D * D)).view(BH, nq, D, D)
    z_i = launch.empty(BH, nq, D, device=idx.device, dtype=torch.float32)
    launch.run("complement_z", complement_z_kernel, (nq, BH), idx.to(torch.int32).contiguous(), kv_state.zblk,
               kv_state.ztot, z_i, nq, nk, idx.shape[-1], D=D, KC=Z_GATHER, num_warps=4)
    return h_i, z_i


def sla2_forward(q, k, v, indices, alpha, *, block_q: int, block_k: int, quant: bool, layout: str,
                 kv_state: KVState | None = None, config: FwdConfig | None = None, linear: bool | None = None,
                 lin_state: tuple | None = None):
    """SLA2 forward: (o in q's layout and dtype, lse fp32 [B, H, N]).

    indices: int [B, H, nq, topk], each row's selected key blocks (ascending, distinct, in [0, nk));
    alpha: fp32 broadcastable to [B, H, nq]. `linear=False` drops the linear branch (benchmarks only).
    lin_state: (H_I, Z_I) from `linear_state` for these indices, if the caller already has them.
    config: the launch configuration (default: tuning.default_fwd_config).
    """
    bq, bk = check_block("block_q", block_q), check_block("block_k", block_k)
    (B, H, N, D), strides = check_qkv({"q": q, "k": k, "v": v}, layout)
    BH, nq, nk = B * H, triton.cdiv(N, bq), triton.cdiv(N, bk)
    topk = check_indices(indices, B, H, nq, nk, q.device)
    idx = indices.to(torch.int32).contiguous()
    alpha3 = alpha_view(alpha, B, H, nq, q.device)
    if kv_state is None:
        kv_state = precompute(k, v, block_k=bk, layout=layout, quant=quant)
    else:
        check_state(kv_state, k, bk, layout, quant)
    cfg = config or default_fwd_config(bq, bk, D, quant)
    if linear is None:
        linear = topk < nk  # every block selected: nothing left for the linear branch, α = 1
    if linear and lin_state is not None:
        check_lin_state(lin_state, BH, nq, D, q.device)
        h_i, z_i = (t.contiguous() for t in lin_state)
    elif linear:
        h_i, z_i = linear_state(idx, kv_state, block_q=bq)
    else:
        h_i = z_i = alpha3  # never read
    o = launch.empty_like(q)
    so = dims(o, layout)[1]
    lse = launch.empty(B, H, N, device=q.device, dtype=torch.float32)
    s = kv_state
    if cfg.tma and (quant or not layouts.tma_hardware(q.device)
                    or not layouts.tma_ready(*(bhnd_view(t, layout) for t in (q, k, v, o)),
                                             *((h_i,) if linear else ()))):
        # The low-bit kernel has no TMA variant: TMA tiles of K̂, V̂ᵀ measured no faster (H100, 2026-11-27, 1.3B
        # at 97%: 1.094-1.100 vs 1.099-1.105 ms); or the GPU has no TMA, or the tensors' strides or alignment do
        # not suit it. A caller's own configuration keeps its warps and stages; the default becomes the pointer one.
        cfg = replace(cfg, tma=False) if config is not None else pointer_config(bq, D)
    scale = 1.0 / math.sqrt(D)
    interpret = launch.interpreting()

    def common(c):
        kw = dict(BQ=bq, BK=bk, D=D, LINEAR=linear, INTERPRET=interpret, num_warps=c.num_warps,
                  num_stages=c.num_stages)
        if c.maxnreg:
            kw["maxnreg"] = c.maxnreg
        return kw

    if quant:
        name, kernel = "sla2_fwd_lowbit", sla2_fwd_lowbit_kernel
        args = (q, idx, alpha3, o, lse, h_i, z_i, s.k8, s.sk, s.v8t, s.sv, s.kmean,
                *strides["q"], *so, *alpha3.stride(), N, H, nq, nk, topk, scale)
        make = lambda c: (args, dict(EXACT_MAX=c.exact_max, **common(c)))  # noqa: E731
    elif cfg.tma:
        name, kernel = "sla2_fwd_tma", sla2_fwd_tma_kernel
        # without a linear branch the kernel never reads H_I: an unwritten placeholder (no fill launch)
        hd = h_i.view(BH * nq, D, D) if linear else q.new_empty(1, D, D, dtype=torch.bfloat16)
        q4, k4, v4, o4 = (bhnd_view(t, layout) for t in (q, k, v, o))
        args = (descriptor(q4, bq), descriptor(k4, bk), descriptor(v4, bk), descriptor(o4, bq),
                descriptor(q4, bq, D // EPI_CHUNKS), descriptor(hd, D // EPI_CHUNKS),
                idx, alpha3, lse, z_i, *alpha3.stride(), N, H, nq, topk, scale)
        make = lambda c: (args, dict(EPI_CHUNKS=EPI_CHUNKS, **common(c)))  # noqa: E731
    else:
        name, kernel = "sla2_fwd", sla2_fwd_kernel
        args = (q, k, v, idx, alpha3, o, lse, h_i, z_i,
                *strides["q"], *strides["k"], *strides["v"], *so, *alpha3.stride(), N, H, nq, topk, scale)
        make = lambda c: (args, common(c))  # noqa: E731
    launch.with_fallback(name, kernel, (nq, BH), (bq, bk, D, q.dtype, linear), cfg, make)
    return o, lse


def forward_with_state(q, k, v, indices, alpha, *, block_q: int, block_k: int, quant: bool, layout: str):
    """(o, lse, H_I, Z_I): the forward with one pass over K and V for the linear branch's state and the low-bit
    tiles alike, returning that state for the backward (sla2_backward's lin_state; zeros, never read, when every
    key block is selected). alpha: the raw α (made effective here). What the training op's CUDA implementation
    runs."""
    state = precompute(k, v, block_k=block_k, layout=layout, quant=quant)
    a3 = effective_alpha(alpha, q, indices, block_q, block_k, layout)
    b, h, n, d = state.shape
    nq = triton.cdiv(n, block_q)
    if indices.shape[-1] < triton.cdiv(n, block_k):
        lin = linear_state(indices, state, block_q=block_q)
        o, lse = sla2_forward(q, k, v, indices, a3, block_q=block_q, block_k=block_k, quant=quant, layout=layout,
                              kv_state=state, lin_state=lin)
        return o, lse, *lin
    o, lse = sla2_forward(q, k, v, indices, a3, block_q=block_q, block_k=block_k, quant=quant, layout=layout,
                          kv_state=state)
    return o, lse, q.new_zeros(b * h, nq, d, d, dtype=torch.bfloat16), q.new_zeros(b * h, nq, d, dtype=torch.float32)
