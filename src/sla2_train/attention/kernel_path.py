"""The CUDA path of SLA2Attention: the Triton kernels of `sla2_kernels` (hard Top-k only).

The reference stays the path for CPU, SoftTop-k and anything the kernels do not cover; `auto` picks
the kernels only when they can run the exact same function.
"""

from __future__ import annotations

import torch

from . import reference as ref

KERNEL_DTYPES = (torch.bfloat16, torch.float16)
KERNEL_HEAD_DIMS = (64, 128)
KERNEL_BLOCKS = (64, 128)

try:
    import sla2_kernels
except ImportError as err:  # triton missing: CPU-only install
    sla2_kernels, _import_error = None, err
else:
    _import_error = None


def kernels_available(q: torch.Tensor, attn) -> tuple[bool, str]:
    """(True, "") when the Triton path computes this call, else (False, the reason)."""
    if sla2_kernels is None:
        return False, f"sla2_kernels cannot be imported ({_import_error})"
    if not q.is_cuda:
        return False, "inputs are not on a CUDA device"
    if q.dtype not in KERNEL_DTYPES:
        return False, f"dtype {q.dtype} is not one of {KERNEL_DTYPES}"
    if attn.head_dim not in KERNEL_HEAD_DIMS:
        return False, f"head_dim {attn.head_dim} is not one of {KERNEL_HEAD_DIMS}"
    if attn.block_q not in KERNEL_BLOCKS or attn.block_k not in KERNEL_BLOCKS:
        return False, f"block sizes ({attn.block_q}, {attn.block_k}) are not in {KERNEL_BLOCKS}"
    if torch.is_grad_enabled() and not getattr(sla2_kernels, "SUPPORTS_BACKWARD", False):
        return False, "gradients are needed and this sla2_kernels build has no backward"
    return True, ""


def run_kernels(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str) -> torch.Tensor:
    n = q.shape[1] if layout == "bnhd" else q.shape[2]
    nk = ref.num_blocks(n, attn.block_k)
    k_sel = ref.topk_count(nk, attn.sparsity)
    scores, indices = sla2_kernels.router(
        q, k, attn.router.proj_q, attn.router.proj_k,
        block_q=attn.block_q, block_k=attn.block_k, topk=k_sel, layout=layout,
    )
    attn.alpha.check_length(scores.shape[-2])
    mass = None
    if attn.alpha.needs_mass:
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, indices.long(), True)
        mass = ref.selected_mass(scores, mask, ref.block_token_counts(n, attn.block_k, q.device))
    alpha = attn.alpha(mass).float()
    if k_sel == nk:  # nothing left for the linear branch: α is exactly 1 (see reference.effective_alpha)
        alpha = torch.ones_like(alpha)
    o, _lse = sla2_kernels.sla2_forward(
        q, k, v, indices, alpha, block_q=attn.block_q, block_k=attn.block_k, quant=attn.quant, layout=layout
    )
    return o
