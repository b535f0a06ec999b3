"""SLA2 as torch.library custom ops, so that torch.compile(fullgraph=True) traces through the attention.

    torch.ops.sla2.router(q, k, proj_q, proj_k, block_q, block_k, topk, layout) -> (scores, indices int32)
    torch.ops.sla2.attention(q, k, v, indices, alpha, block_q, block_k, quant, layout, sparse_out=True)
        -> (o, lse [B, H, N], o_s: with sparse_out the sparse branch's output in o's layout (with quant the
            low-bit one), else empty)
    torch.ops.sla2.attention_backward(do, q, k, v, o, lse, indices, alpha, block_q, block_k, layout, o_s=None,
                                      quant=False)
        -> (dq, dk, dv, dalpha [B, H, nq] fp32, or float64 for float64 inputs)
    torch.ops.sla2.soft_topk_lambda(z, k) -> λ float64 [..., 1] with Σ_j σ(z_j + λ) = k (SoftTop-k's threshold;
        no gradient: reference/soft_topk.py differentiates through it by the implicit function theorem)

This file only registers them. Each op has a fake (meta) implementation for tracing and one implementation per
device, picked by torch's dispatcher: on CUDA the Triton kernels of sla2_kernels (`*_kernels`, which validate
their inputs), on CPU the reference (`*_reference`: reference/indexed.py, reference/backward.py,
reference/soft_topk.py). Whether a call of SLA2Attention takes the ops at all is decided in backend.py; direct
callers use backend.sla2_attention / backend.block_router, which validate.

`attention` carries its autograd formula: gradients for q, k, v and α; indices, lse and o_s get none (hard
Top-k; lse and o_s are auxiliary outputs). With quant=True the forward is the low-bit sparse branch and the
backward the bf16 one at the original q, k, v using the forward's o and lse (QAT's straight-through estimator,
docs/method.md: Low-bit sparse branch and QAT), on both devices; dα is the exact derivative of the low-bit
forward, taken from the O_s^q it mixed in (o_s, kept for the backward: B·H·N·D more numbers in q's dtype per
call; sparse_out=False skips it where no gradient reaches α, as backend.keeps_sparse_output decides). In bf16
the kept O_s spares the CUDA backward one of its dq loop's four products a step (Δ = α dO·O_s known before the
loop) for the same memory; the CPU reference computes the same gradients without it. alpha is
at least fp32 and broadcastable to [B, H, nq]; it is forced to 1 when every key block is selected
(reference.effective_alpha), and its gradient comes back in its own shape. Beyond q, k, v, o, lse (and o_s with
quant) the backward needs nothing from the forward: the kernels rebuild the linear branch's state with fp32
sums (sla2_kernels/backward_state.py), which the gradients at small α need and which would take B·H·n_q·D² fp32
numbers per call to keep (200 MB at the Wan-1.3B shape).
"""

from __future__ import annotations

import sla2_kernels  # loads its kernels on first use: importing it needs no triton
import torch

from .reference import backward as ref_backward
from .reference import indexed
from .reference.soft_topk import solve_lambda


# ------------------------------------------------------------------------------------------------ router


def router_reference(
    q: torch.Tensor, k: torch.Tensor, proj_q: torch.Tensor, proj_k: torch.Tensor,
    block_q: int, block_k: int, topk: int, layout: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block scores [B, H, nq, nk] (fp32; float64 for float64 inputs) and the Top-k key blocks int32
    [B, H, nq, topk] (ascending)."""
    return indexed.indexed_router(q, k, proj_q, proj_k, block_q, block_k, topk, layout)


def router_kernels(q, k, proj_q, proj_k, block_q, block_k, topk, layout):
    return sla2_kernels.router(q, k, proj_q, proj_k, block_q=block_q, block_k=block_k, topk=topk, layout=layout)


router = torch.library.custom_op("sla2::router", router_reference, mutates_args=(), device_types="cpu")
router.register_kernel("cuda", router_kernels)


@router.register_fake
def _router_fake(q, k, proj_q, proj_k, block_q, block_k, topk, layout):
    b, h, n, _ = indexed.dims(q, layout)
    nq, nk = -(-n // block_q), -(-n // block_k)
    return (q.new_empty(b, h, nq, nk, dtype=indexed.acc_dtype(q.dtype)), q.new_empty(b, h, nq, topk, dtype=torch.int32))


# ------------------------------------------------------------------------------------------------ SoftTop-k λ


def soft_topk_lambda_reference(z: torch.Tensor, k: int) -> torch.Tensor:
    return solve_lambda(z, k)


def soft_topk_lambda_kernels(z, k):
    return sla2_kernels.soft_topk_lambda(z, k)


soft_topk_lambda = torch.library.custom_op("sla2::soft_topk_lambda", soft_topk_lambda_reference, mutates_args=(),
                                           device_types="cpu")
soft_topk_lambda.register_kernel("cuda", soft_topk_lambda_kernels)


@soft_topk_lambda.register_fake
def _soft_topk_lambda_fake(z, k):
    return z.new_empty(*z.shape[:-1], 1, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ attention


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, alpha: torch.Tensor,
    block_q: int, block_k: int, quant: bool, layout: str, sparse_out: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SLA2 with a hard block selection: (o in q's layout and dtype, lse [B, H, N] of the sparse branch, fp32 or
    float64 for float64 inputs, o_s: with sparse_out the sparse branch's output like o (with quant the low-bit
    one), else empty)."""
    return indexed.indexed_forward(q, k, v, indices, alpha, block_q, block_k, quant, layout, sparse_out)


def attention_kernels(q, k, v, indices, alpha, block_q, block_k, quant, layout, sparse_out=True):
    # o (and o_s when kept) are allocated as empty_like(q) and lse contiguous, as the fake promises.
    return sla2_kernels.sla2_forward(q, k, v, indices, alpha, block_q=block_q, block_k=block_k, quant=quant,
                                     layout=layout, sparse_out=sparse_out)


attention = torch.library.custom_op("sla2::attention", attention_reference, mutates_args=(), device_types="cpu")
attention.register_kernel("cuda", attention_kernels)


@attention.register_fake
def _attention_fake(q, k, v, indices, alpha, block_q, block_k, quant, layout, sparse_out=True):
    b, h, n, _ = indexed.dims(q, layout)
    o_s = torch.empty_like(q) if sparse_out else q.new_empty(0)
    return torch.empty_like(q), q.new_empty(b, h, n, dtype=indexed.acc_dtype(q.dtype)), o_s


def backward_reference(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    indices: torch.Tensor, alpha: torch.Tensor, block_q: int, block_k: int, layout: str,
    o_s: torch.Tensor | None = None, quant: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv in their inputs' layout, contiguous; dalpha [B, H, nq] before its reduction to α's shape).
    o_s: the forward's sparse output; with quant (QAT) dα's sparse term is taken from it. The bf16 O_s is only
    the kernels' shortcut: the reference's sums need it not."""
    dq, dk, dv, dalpha = ref_backward.reference_backward(do, q, k, v, o, lse, indices, alpha, block_q, block_k,
                                                         layout, o_s if quant else None)
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), dalpha


def backward_kernels(do, q, k, v, o, lse, indices, alpha, block_q, block_k, layout, o_s=None, quant=False):
    return sla2_kernels.sla2_backward(do, q, k, v, o, lse, indices, alpha, block_q=block_q, block_k=block_k,
                                      layout=layout, o_s=o_s, quant=quant)


attention_backward = torch.library.custom_op("sla2::attention_backward", backward_reference, mutates_args=(),
                                             device_types="cpu")
attention_backward.register_kernel("cuda", backward_kernels)


@attention_backward.register_fake
def _attention_backward_fake(do, q, k, v, o, lse, indices, alpha, block_q, block_k, layout, o_s=None, quant=False):
    b, h, n, _ = indexed.dims(q, layout)
    like = dict(memory_format=torch.contiguous_format)
    return (torch.empty_like(q, **like), torch.empty_like(k, **like), torch.empty_like(v, **like),
            q.new_empty(b, h, -(-n // block_q), dtype=indexed.acc_dtype(q.dtype)))


def keep_for_backward(ctx, inputs, output):
    """What the attention's backward reads, kept on ctx (the op's setup_context; direct.py's forward)."""
    q, k, v, indices, alpha, block_q, block_k, quant, layout, sparse_out = inputs
    o, lse, o_s = output
    ctx.save_for_backward(q, k, v, o, lse, indices, alpha, o_s)
    ctx.cfg = (block_q, block_k, layout, quant, sparse_out)
    ctx.mark_non_differentiable(lse, o_s)


def attention_grads(ctx, do, backward):
    """The ten inputs' gradients from what keep_for_backward kept; `backward` computes (dq, dk, dv, dalpha [B, H, nq])
    with attention_backward's arguments (the op, or on the eager CUDA path its kernels: direct.py)."""
    q, k, v, o, lse, indices, alpha, o_s = ctx.saved_tensors
    block_q, block_k, layout, quant, sparse_out = ctx.cfg
    if quant and not sparse_out and ctx.needs_input_grad[4]:
        raise RuntimeError("sla2::attention: the gradient of alpha after a low-bit forward needs its sparse output; "
                           "call it with sparse_out=True")
    # QAT: α mixed the low-bit O_s^q in, so dα's sparse term is dO·O_s^q (docs/method.md, Backward); bf16: the
    # kernels' dq loop knows Δ from O_s
    dq, dk, dv, dalpha = backward(do, q, k, v, o, lse, indices, alpha, block_q, block_k, layout,
                                  o_s if sparse_out else None, quant)
    da = dalpha.sum_to_size(alpha.shape).to(alpha.dtype) if ctx.needs_input_grad[4] else None
    return dq, dk, dv, None, da, None, None, None, None, None


def _backward(ctx, do, _grad_of_lse, _grad_of_o_s):
    return attention_grads(ctx, do, torch.ops.sla2.attention_backward)


attention.register_autograd(_backward, setup_context=keep_for_backward)
