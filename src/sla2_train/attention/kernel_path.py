"""The op path of SLA2Attention (hard Top-k): router + attention as torch.library custom ops (ops.py).

The ops run the Triton kernels of `sla2_kernels` on CUDA where they cover the call and the reference
elsewhere, forward and backward, so the same graph runs (and torch.compile traces it) on CPU and GPU.
`auto` takes this path on CUDA when the kernels cover the call, and on CPU (the reference behind the op);
`reference` never takes it; `triton` insists on the kernels.
"""

from __future__ import annotations

import warnings

import torch

from . import ops
from . import reference as ref

_warned_fallbacks: set[str] = set()


def kernels_available(q: torch.Tensor, attn) -> tuple[bool, str]:
    """(True, "") when the Triton kernels compute this call (forward and, if needed, backward), else (False, why)."""
    ok, why = ops.kernels_cover(q, attn.block_q, attn.block_k)
    if not ok:
        return ok, why
    if torch.is_grad_enabled() and ops.kernel_autograd is None:
        return False, f"gradients are needed and the backward kernels cannot be imported ({ops.backward_import_error})"
    return True, ""


def use_op_path(q: torch.Tensor, attn) -> bool:
    """Whether SLA2Attention runs through the custom ops (see the module docstring); raises for an impossible
    backend='triton'."""
    if attn.backend == "reference":
        return False
    ok, why = kernels_available(q, attn)
    if attn.backend == "triton":
        if not ok:
            raise RuntimeError(f"backend='triton' cannot run: {why}")
        return True
    if not ok and q.is_cuda and why not in _warned_fallbacks:
        # The module's reference path is dense, O(N²) memory: at Wan lengths the next thing is usually an OOM.
        _warned_fallbacks.add(why)
        warnings.warn(f"SLA2Attention runs its dense PyTorch reference on CUDA because {why}; "
                      "backend='triton' makes this an error", stacklevel=3)
    return ok or q.device.type == "cpu"


def run_kernels(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str) -> torch.Tensor:
    n = q.shape[1] if layout == "bnhd" else q.shape[2]
    nk = ref.num_blocks(n, attn.block_k)
    k_sel = ref.topk_count(nk, attn.sparsity)
    # Hard Top-k has no gradient: the router runs on detached inputs (it is trained through SoftTop-k only).
    scores, indices = torch.ops.sla2.router(
        q.detach(), k.detach(), attn.router.proj_q.detach(), attn.router.proj_k.detach(),
        attn.block_q, attn.block_k, k_sel, layout,
    )
    attn.alpha.check_length(scores.shape[-2])
    mass = None
    if attn.alpha.needs_mass:
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, indices.long(), True)
        mass = ref.selected_mass(scores, mask, ref.block_token_counts(n, attn.block_k, q.device))
    alpha = ops.alpha_dtype(attn.alpha(mass))  # the op forces α = 1 when k_sel == nk (reference.effective_alpha)
    return torch.ops.sla2.attention(q, k, v, indices, alpha, attn.block_q, attn.block_k, attn.quant, layout)[0]
