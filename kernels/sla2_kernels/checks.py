"""Input validation of the public API: one clear line per problem (ValueError "sla2_kernels: ..."), raised before
any launch. What the kernels cover is defined here once (`unsupported`), for these checks and for callers that
choose between the kernels and something else."""

from __future__ import annotations

import os

import torch

from .launch import interpreting
from .layouts import LAYOUTS, dims
from .tuning import SOFT_TOPK_MAX_ROW

DTYPES = (torch.bfloat16, torch.float16)
HEAD_DIMS = (64, 128)
BLOCKS = (64, 128)


def fail(msg: str):
    raise ValueError(f"sla2_kernels: {msg}")


def unsupported(dtype: torch.dtype, head_dim: int, block_q: int, block_k: int) -> str:
    """Why the kernels cannot compute a call with these options ("" when they can)."""
    if dtype not in DTYPES:
        return f"dtype {dtype} is not one of {DTYPES}"
    if head_dim not in HEAD_DIMS:
        return f"head_dim {head_dim} is not one of {HEAD_DIMS}"
    if block_q not in BLOCKS or block_k not in BLOCKS:
        return f"block sizes ({block_q}, {block_k}) are not in {BLOCKS}"
    return ""


def soft_topk_unsupported(n: int) -> str:
    """Why soft_topk_lambda cannot take rows of n key blocks ("" when it can): a program holds a whole row."""
    if n > SOFT_TOPK_MAX_ROW:
        return f"soft_topk_lambda holds a row in one program, up to {SOFT_TOPK_MAX_ROW} key blocks; got {n}"
    return ""


def check_block(name: str, value) -> int:
    if value not in BLOCKS:
        fail(f"{name} must be one of {BLOCKS}, got {value!r}")
    return int(value)


def check_qkv(tensors: dict, layout: str):
    """((B, H, N, D), {name: strides}) of same-shaped 4-D bf16/fp16 tensors on one CUDA device (or any device
    under the interpreter)."""
    if layout not in LAYOUTS:
        fail(f"layout must be one of {LAYOUTS}, got {layout!r}")
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            fail(f"{name} must be a 4-D tensor ({layout}), got {getattr(t, 'shape', type(t))}")
        if t.dtype not in DTYPES:
            fail(f"{name} dtype {t.dtype} is not supported; use one of {DTYPES}")
    first = next(iter(tensors.values()))
    listing = lambda attr: ", ".join(f"{n} {getattr(x, attr)}" for n, x in tensors.items())  # noqa: E731
    if any(t.shape != first.shape for t in tensors.values()):
        fail("shapes differ: " + ", ".join(f"{n} {tuple(x.shape)}" for n, x in tensors.items()))
    if any(t.dtype != first.dtype for t in tensors.values()):
        fail("dtypes differ: " + listing("dtype"))
    if any(t.device != first.device for t in tensors.values()):
        fail("devices differ: " + listing("device"))
    if first.device.type != "cuda" and not interpreting():
        fail(f"tensors are on {first.device}; the kernels need CUDA (or TRITON_INTERPRET=1 for tests)")
    (B, H, N, D), _ = dims(first, layout)
    if D not in HEAD_DIMS:
        fail(f"head_dim {D} is not supported; use one of {HEAD_DIMS}")
    if min(B, H, N) < 1:
        fail(f"empty input: B={B}, H={H}, N={N}")
    return (B, H, N, D), {n: dims(t, layout)[1] for n, t in tensors.items()}


def check_projections(proj_q, proj_k, H: int, D: int, device: torch.device):
    for name, w in (("proj_q", proj_q), ("proj_k", proj_k)):
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (H, D, D):
            fail(f"{name} must be [H, D, D] = [{H}, {D}, {D}], got {tuple(getattr(w, 'shape', ()))}")
        if w.device != device:
            fail(f"{name} is on {w.device}, q on {device}")


def check_topk(topk, nk: int):
    """The number of key blocks kept a row (the router's Top-k, SoftTop-k's row sum): an int in [1, nk]."""
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= nk:
        fail(f"topk must be an int in [1, {nk}] (number of key blocks), got {topk!r}")


def check_indices(indices, B: int, H: int, nq: int, nk: int, device: torch.device) -> int:
    """Shape, dtype and device of the selection [B, H, nq, topk]; its values too where that is cheap
    (check_index_values). Returns topk."""
    if not isinstance(indices, torch.Tensor) or indices.dim() != 4 or tuple(indices.shape[:3]) != (B, H, nq):
        fail(f"indices must be [B, H, nq, topk] = [{B}, {H}, {nq}, topk], got {tuple(getattr(indices, 'shape', ()))}")
    if indices.dtype not in (torch.int32, torch.int64) or indices.device != device:
        fail(f"indices must be int32/int64 on {device}, got {indices.dtype} on {indices.device}")
    topk = indices.shape[-1]
    if not 1 <= topk <= nk:
        fail(f"indices select {topk} key blocks per query block; must be in [1, {nk}]")
    check_index_values(indices, nk)
    return topk


def check_index_values(indices: torch.Tensor, nk: int):
    """Every row's key blocks in [0, nk), distinct and ascending (the low-bit kernel rounds P̃ against the running
    maximum in the row's order, which the reference takes ascending). A host synchronisation, so it runs only
    under the interpreter (CPU tests) or with SLA2_KERNELS_CHECK=1; the router always produces valid rows."""
    if not (interpreting() or os.environ.get("SLA2_KERNELS_CHECK", "0") == "1"):
        return
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= nk:
        fail(f"indices must lie in [0, {nk}) (key blocks), found values in [{lo}, {hi}]")
    if bool((indices[..., 1:] == indices[..., :-1]).any()):
        fail("indices repeat a key block within a row; each query block's selection must be distinct")
    if bool((indices[..., 1:] < indices[..., :-1]).any()):
        fail("indices must be ascending within each row (as the router returns them)")


def alpha_view(alpha, B: int, H: int, nq: int, device) -> torch.Tensor:
    """alpha as an fp32 [B, H, nq] view (expand: stride 0 where it broadcasts, no copy of the values)."""
    a = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha))
    a = a.to(device=device, dtype=torch.float32)
    if a.dim() <= 3:
        try:
            return a.expand(B, H, nq)
        except RuntimeError:
            pass
    fail(f"alpha of shape {tuple(a.shape)} does not broadcast to [B, H, nq] = [{B}, {H}, {nq}]")


def check_state(state, k: torch.Tensor, block_k: int, layout: str, quant: bool):
    """A KVState passed in must be the one of this k, block_k (and built with quant for the low-bit forward)."""
    shape = dims(k, layout)[0]
    if state.block_k != block_k or tuple(state.shape) != tuple(shape):
        fail(f"kv_state was built for block_k={state.block_k}, shape {state.shape}; "
             f"this call has block_k={block_k}, shape {shape}")
    if quant and not state.quant:
        fail("kv_state was built with quant=False; build it with quant=True for the low-bit forward")


def check_lin_state(lin_state, BH: int, nq: int, D: int, device: torch.device):
    h_i, z_i = lin_state
    if (tuple(h_i.shape), h_i.dtype, tuple(z_i.shape), z_i.dtype) != (
            (BH, nq, D, D), torch.bfloat16, (BH, nq, D), torch.float32) or h_i.device != device:
        fail(f"lin_state must be (bf16 [{BH}, {nq}, {D}, {D}], fp32 [{BH}, {nq}, {D}]) on {device} "
             f"(linear_state), got ({h_i.dtype} {tuple(h_i.shape)}, {z_i.dtype} {tuple(z_i.shape)})")


def check_sparse_output(o_s, q: torch.Tensor, quant):
    """o_s given to the backward: the forward's sparse output, q's shape, dtype and device, and which forward made
    it (quant) named."""
    if quant is None:
        fail("o_s needs quant=True (the low-bit forward's O_s^q) or quant=False (the bf16 forward's O_s)")
    got = (tuple(getattr(o_s, "shape", ())), getattr(o_s, "dtype", type(o_s)), getattr(o_s, "device", None))
    if not isinstance(o_s, torch.Tensor) or got != (tuple(q.shape), q.dtype, q.device):
        fail(f"o_s must be sla2_forward(..., sparse_out=True)'s third output, {q.dtype} {tuple(q.shape)} on "
             f"{q.device} like q, got {got[1]} {got[0]} on {got[2]} (or None)")
