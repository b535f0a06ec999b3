"""Forward + backward of SLA2 as differentiable functions (tensors only; no torch.library here).

`sla2_attention(q, k, v, indices, alpha, ...)` is a torch.autograd.Function: the forward is
`api.sla2_forward` (bf16/fp16, or the low-bit INT8/FP8 sparse branch with quant=True), the backward is
`sla2_bwd.sla2_backward`. QAT (SLA2.md §5): with quant=True the forward runs low-bit and the backward is the
ordinary bf16/fp16 backward on the ORIGINAL q, k, v, using the forward's output and log-sum-exp (a
straight-through estimator); nothing in the backward is quantised.

`attention_backward(...)` is the backward alone (what the torch.library op of sla2_train registers as its
autograd formula): it recomputes the linear branch's state H_I, Z_I (one pass over K and V and one product)
unless the caller passes the forward's `lin_state`.

Gradients: q, k, v, and α (summed to α's shape). The router's indices get none (hard Top-k), and lse is not
differentiable (the backward ignores a gradient on it).
"""

from __future__ import annotations

import torch
import triton

from . import api
from .api import linear_state, precompute, sla2_forward
from .sla2_bwd import sla2_backward


def _shape(q: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    if layout == "bnhd":
        b, n, h, d = q.shape
    else:
        b, h, n, d = q.shape
    return b, h, n, d


def effective_alpha(alpha, q: torch.Tensor, indices: torch.Tensor, block_q: int, block_k: int, layout: str):
    """α as fp32 [B, H, nq] (a broadcasting view), forced to 1 when every key block is selected."""
    b, h, n, _ = _shape(q, layout)
    nq, nk = triton.cdiv(n, block_q), triton.cdiv(n, block_k)
    if indices.shape[-1] >= nk:
        return torch.ones((), device=q.device, dtype=torch.float32).expand(b, h, nq)
    return api._alpha_view(alpha, b, h, nq, q.device)


def forward_linear_state(k, v, indices, *, block_q: int, block_k: int, layout: str, kv_state=None):
    """(H_I, Z_I) the forward uses (api.linear_state), or None when every key block is selected (no linear branch)."""
    n = _shape(k, layout)[2]
    if indices.shape[-1] >= triton.cdiv(n, block_k):
        return None
    if kv_state is None:
        kv_state = precompute(k, v, block_k=block_k, layout=layout, quant=False)
    return linear_state(indices, kv_state, block_q=block_q)


def forward_with_state(q, k, v, indices, alpha, *, block_q: int, block_k: int, quant: bool, layout: str):
    """(o, lse, lin_state): the forward, with one pass over K and V for the linear branch's state and the low-bit
    tiles alike; lin_state is (H_I, Z_I), the backward's input, or None when every key block is selected.
    alpha: effective α (effective_alpha)."""
    state = precompute(k, v, block_k=block_k, layout=layout, quant=quant)
    lin = forward_linear_state(k, v, indices, block_q=block_q, block_k=block_k, layout=layout, kv_state=state)
    o, lse = sla2_forward(q, k, v, indices, alpha, block_q=block_q, block_k=block_k, quant=quant, layout=layout,
                          kv_state=state, lin_state=lin)
    return o, lse, lin


def attention_backward(
    do, q, k, v, o, lse, indices, alpha, *, block_q: int, block_k: int, layout: str, lin_state=None, **kw
):
    """(dq, dk, dv, dalpha fp32 [B, H, nq]) from the forward's o and lse; α is the raw α (made effective here).
    lin_state: the forward's (H_I, Z_I); recomputed from k, v when None."""
    a3 = effective_alpha(alpha, q, indices, block_q, block_k, layout)
    if lin_state is None:
        lin_state = forward_linear_state(k, v, indices, block_q=block_q, block_k=block_k, layout=layout)
    if lin_state is None:  # no linear branch: its state is never read
        dummy = torch.empty(1, device=q.device, dtype=torch.float32)
        lin_state = (dummy, dummy)
    dq, dk, dv, dalpha = sla2_backward(
        do, q, k, v, o, lse, indices, a3, block_q=block_q, block_k=block_k, layout=layout,
        h_i=lin_state[0], z_i=lin_state[1], **kw
    )
    return dq, dk, dv, dalpha


def reduce_alpha_grad(dalpha: torch.Tensor, alpha) -> torch.Tensor | None:
    """Sum the per-(batch, head, query block) gradient to α's own (broadcast) shape."""
    if not isinstance(alpha, torch.Tensor):
        return None
    return dalpha.sum_to_size(alpha.shape).to(alpha.dtype) if alpha.dim() else dalpha.sum().to(alpha.dtype)


class SLA2Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, alpha, block_q, block_k, quant, layout, save_kv_state):
        a3 = effective_alpha(alpha, q, indices, block_q, block_k, layout)
        o, lse, lin = forward_with_state(q, k, v, indices, a3, block_q=block_q, block_k=block_k, quant=quant,
                                         layout=layout)
        ctx.save_for_backward(q, k, v, o, lse, indices, alpha if isinstance(alpha, torch.Tensor) else None)
        ctx.alpha_value = None if isinstance(alpha, torch.Tensor) else alpha
        ctx.cfg = (block_q, block_k, layout)
        ctx.lin_state = lin if save_kv_state else None
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse, indices, alpha = ctx.saved_tensors
        block_q, block_k, layout = ctx.cfg
        a = alpha if alpha is not None else ctx.alpha_value
        dq, dk, dv, dalpha = attention_backward(
            do, q, k, v, o, lse, indices, a, block_q=block_q, block_k=block_k, layout=layout, lin_state=ctx.lin_state
        )
        ctx.lin_state = None
        da = reduce_alpha_grad(dalpha, alpha) if alpha is not None and ctx.needs_input_grad[4] else None
        return dq, dk, dv, None, da, None, None, None, None, None


def sla2_attention(q, k, v, indices, alpha, *, block_q: int, block_k: int, quant: bool = False, layout: str = "bnhd",
                   save_kv_state: bool = False):
    """Differentiable SLA2 (kernels forward + backward): returns (o, lse). lse is not differentiable.

    save_kv_state keeps the forward's H_I, Z_I for the backward (B·H·nq·D² bf16, the size of K at b_q = D = 128;
    one pass over K and V and one product less in the backward).
    """
    return SLA2Function.apply(q, k, v, indices, alpha, block_q, block_k, quant, layout, save_kv_state)
