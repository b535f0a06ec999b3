"""What the Gluon kernels (sla2_fwd_gluon.py, sla2_bwd_dq_gluon.py) share: the import of
Gluon, which older Tritons lack (AVAILABLE), the TMA copies under the names of the installed release, the
[1, 1, rows, D] tiles of the [B, H, N, D] views as the matrices the products take, the key mask at N, and the
host's descriptors of those tiles and rule for taking a call (`suits`).

Gluon is Triton's explicit dialect: layouts, shared-memory buffers, barriers and asynchronous wgmma are written
out, so a kernel can place each TMA load where its buffer becomes free. It has no interpreter: the CPU tests
compile these kernels for sm_90a, the GPU tests compare them with their Triton twins.
"""

from __future__ import annotations

import functools

import torch

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (  # noqa: F401  (re-exported to the kernels)
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_init,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    # Triton 3.6 names the TMA copies async_copy_global_to_shared / async_copy_shared_to_global; later releases
    # async_load / async_store, same arguments.
    tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
    # a barrier of the program's threads: thread_barrier in Triton 3.6, barrier later
    thread_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
    AVAILABLE = True
except ImportError:  # pragma: no cover - a Triton without Gluon's Hopper API
    AVAILABLE = False

# Every Gluon kernel here is one warp group: the wgmma atom is 4 warps × 16 rows.
WARPS = 4

if AVAILABLE:
    GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}

    @gluon.jit
    def tiles_2d(buf, ROWS: gl.constexpr, D: gl.constexpr):
        """A [1, 1, ROWS, D] TMA tile as the [ROWS, D] matrix the products take (same bytes, same swizzle)."""
        return buf.reshape([ROWS, D])

    @gluon.jit
    def load_kv(k_desc, v_desc, b, h, start, bar, k_buf, v_buf):
        """TMA loads of one selected key block's K and V tiles, completing on `bar`."""
        mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        tma_load(k_desc, [b, h, start, 0], bar, k_buf)
        tma_load(v_desc, [b, h, start, 0], bar, v_buf)

    @gluon.jit
    def keys_before_n(sc, start, N, BK: gl.constexpr):
        """sla2_fwd.keys_before_n for Gluon's score tiles (whose key index needs the tile's column layout): −inf on
        keys at or past N, a select paid only by the block that reaches past N."""
        if start + BK > N:
            cols: gl.constexpr = gl.SliceLayout(0, sc.type.layout)
            sc = gl.where((start + gl.arange(0, BK, layout=cols))[None, :] < N, sc, float("-inf"))
        return sc

    def descriptor(t: torch.Tensor, rows: int) -> TensorDescriptor:
        """Gluon descriptor of a [B, H, N, D] view (H_I as [B·H·nq, 1, D, D]) in tiles of `rows` whole rows of its
        last two dimensions, with the shared-memory layout the kernels' buffers and products take (the widest
        swizzle the row allows)."""
        block = [1] * (t.dim() - 2) + [rows, t.shape[-1]]
        return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, GL_DTYPES[t.dtype]))


def suits(device: torch.device, *dtypes: torch.dtype) -> bool:
    """Gluon's part of every Gluon kernel's rule, beside the caller's (which has decided that its tensors take TMA
    tiles): Gluon built, a compiled launch (not the interpreter) on a Hopper GPU (the kernels are written for its
    wgmma; later GPUs take the Triton kernels), 16-bit tiles of one dtype."""
    from .launch import interpreting

    return (AVAILABLE and not interpreting() and hopper(device) and dtypes[0] in (torch.bfloat16, torch.float16)
            and all(d == dtypes[0] for d in dtypes))


@functools.cache
def hopper(device: torch.device) -> bool:
    """sm_90: the GPUs whose warp-group MMA (wgmma) the Gluon kernels use (asked once per device)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9
