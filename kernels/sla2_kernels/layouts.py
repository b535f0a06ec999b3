"""How the kernels see their tensors: the two layouts, dims and strides, [B, H, N, D] views, TMA descriptors and
whether a tensor (and the GPU) suits TMA.

q, k, v are [B, H, N, D] ("bhnd") or [B, N, H, D] ("bnhd", diffusers'); the kernels read either through its
strides, so no transposing copy is made.
"""

from __future__ import annotations

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from .launch import interpreting

LAYOUTS = ("bhnd", "bnhd")
# h_j is stored for a multiple of this many key blocks (zero blocks after the last): the inner dimension of the
# linear-state product (1 − selection) @ h. At nk = 1182 (Wan-14B) cuBLAS's bf16 GEMM ran at 220 TFLOP/s
# (4.1 ms, H100); rows of the mask must start 16-byte aligned for its fast kernels.
NK_ALIGN = 8


def dims(x: torch.Tensor, layout: str) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(B, H, N, D) and the element strides in that order, for either layout."""
    if layout == "bhnd":
        (B, H, N, D), (sb, sh, sn, sd) = x.shape, x.stride()
    else:
        (B, N, H, D), (sb, sn, sh, sd) = x.shape, x.stride()
    return (B, H, N, D), (sb, sh, sn, sd)


def bhn_strides(t: torch.Tensor, layout: str) -> tuple[int, int, int]:
    """(batch, head, token) strides; the backward's kernels take a unit stride along head_dim."""
    return dims(t, layout)[1][:3]


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def bhnd_view(t: torch.Tensor, layout: str) -> torch.Tensor:
    """t as a [B, H, N, D] view (no copy)."""
    return t if layout == "bhnd" else t.permute(0, 2, 1, 3)


def tma_ready(*tensors: torch.Tensor) -> bool:
    """Whether TMA can move tiles of these tensors: 16-byte aligned base, unit stride in the last dimension,
    every other stride a positive multiple of 16 bytes."""
    for t in tensors:
        es = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s <= 0 or (s * es) % 16 for s in t.stride()[:-1]):
            return False
    return True


def tma_hardware(device: torch.device) -> bool:
    """TMA exists from Hopper (sm_90) on. Triton lowers descriptors to plain loads on older GPUs, where the
    4-warp TMA configuration spills (sm_80 compile: 10 KB of stack a thread), so they take the pointer kernels.
    Under the interpreter (CPU tests) the TMA kernels run anywhere."""
    if interpreting():
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def descriptor(t: torch.Tensor, rows: int, cols: int | None = None) -> TensorDescriptor:
    """Descriptor of a [B, H, N, D] (or [BH·nq, D, D]) view, blocks of `rows` rows of one (b, h) and `cols` of
    the last dimension (all of it by default)."""
    block = [1] * (t.dim() - 2) + [rows, cols or t.shape[-1]]
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block)
