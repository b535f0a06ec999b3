"""The op path's kernels called without torch's custom-op dispatcher, for eager calls on CUDA (backend.py decides
when).

torch.ops.sla2.router / attention are what torch.compile traces and what dispatch modes see (selective activation
checkpointing keeps their outputs, fake tensors run their fake implementations). An eager call needs neither,
and there the dispatch costs host time that the kernels' own host code does not: the dispatcher with its device
guards, and the op's autograd wrapper, which rebuilds the schema's argument list on every call. When the host
issues a call more slowly than the GPU runs it, the training step waits on that time (docs/results.md: SLA2Attention
forward as a training step calls it). Here the same kernels run in the same order, behind the op's own autograd
formula (ops.keep_for_backward, ops.attention_grads), so the two paths give the same outputs and gradients.
"""

from __future__ import annotations

import torch

from . import ops


# torch.ops.sla2.router's CUDA implementation itself: the router op has no autograd formula to keep
router = ops.router_kernels


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, alpha, block_q, block_k, quant, layout, sparse_out):
        out = ops.attention_kernels(q, k, v, indices, alpha, block_q, block_k, quant, layout, sparse_out)
        ops.keep_for_backward(ctx, (q, k, v, indices, alpha, block_q, block_k, quant, layout, sparse_out), out)
        return out

    @staticmethod
    def backward(ctx, do, _grad_of_lse, _grad_of_o_s):
        return ops.attention_grads(ctx, do, ops.backward_kernels)


def attention(q, k, v, indices, alpha, block_q: int, block_k: int, quant: bool, layout: str, sparse_out: bool = True):
    """torch.ops.sla2.attention's CUDA implementation with its autograd formula, called directly: (o, lse, o_s)."""
    return _Attention.apply(q, k, v, indices, alpha, block_q, block_k, quant, layout, sparse_out)
