"""Input validation of sla2_train.attention: one clear line per problem, raised before any work. SLA2Attention
checks its options and q, k, v at its boundary; the public wrappers of backend.py check the arguments of a direct
call of the ops."""

from __future__ import annotations

import torch

from .reference.blocks import num_blocks
from .reference.indexed import dims

LAYOUTS = ("bnhd", "bhnd")
VARIANTS = ("sla2", "sla", "full")
TOPK_MODES = ("hard", "soft")
BACKENDS = ("auto", "reference", "triton")
# which key blocks the sparse branch gets: the router's on this call's q, k; the oracle's; or the router's on the
# frozen base model's dense q, k, set on the layer before each call (models/base_selection.py)
SELECTIONS = ("router", "bestmass", "base")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")


def check_options(num_heads: int, head_dim: int, sparsity: float, block_q: int, block_k: int, tau: float) -> None:
    if num_heads < 1 or head_dim < 1:
        raise ValueError(f"num_heads and head_dim must be positive, got {num_heads} and {head_dim}")
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if b < 1 or b & (b - 1):
            raise ValueError(f"{name} must be a positive power of two, got {b}")
    if tau <= 0:
        raise ValueError(f"tau (SoftTop-k temperature) must be > 0, got {tau}")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str, num_heads: int, head_dim: int) -> None:
    check_qkv_tensors(q, k, v, layout)
    heads, dim = (q.shape[2], q.shape[3]) if layout == "bnhd" else (q.shape[1], q.shape[3])
    if heads != num_heads or dim != head_dim:
        raise ValueError(
            f"expected {num_heads} heads of head_dim {head_dim} in layout {layout}, got {heads} heads of {dim}"
        )


def check_qkv_tensors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str) -> None:
    """Layout, rank, dtype, shapes and device of q, k, v (no expectation on heads or head_dim)."""
    check_choice("layout", layout, LAYOUTS)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D ({layout}), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if q.numel() == 0:
        raise ValueError(f"q, k, v are empty: shape {tuple(q.shape)} ({layout})")


def _check_blocks(block_q: int, block_k: int) -> None:
    for name, blk in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(blk, int) or blk < 1:
            raise ValueError(f"{name} must be a positive int, got {blk!r}")


def check_attention_args(q, k, v, indices, alpha, block_q: int, block_k: int, layout: str) -> None:
    """The arguments of sla2::attention, for callers outside SLA2Attention (backend.sla2_attention)."""
    check_qkv_tensors(q, k, v, layout)
    _check_blocks(block_q, block_k)
    b, h, n, _ = dims(q, layout)
    nq, nk = num_blocks(n, block_q), num_blocks(n, block_k)
    if indices.dim() != 4 or tuple(indices.shape[:3]) != (b, h, nq):
        raise ValueError(f"indices must be [B, H, nq, topk] = [{b}, {h}, {nq}, topk], got {tuple(indices.shape)}")
    if indices.dtype not in (torch.int32, torch.int64) or indices.device != q.device:
        raise TypeError(f"indices must be int32/int64 on {q.device}, got {indices.dtype} on {indices.device}")
    if not 1 <= indices.shape[-1] <= nk:
        raise ValueError(f"indices select {indices.shape[-1]} key blocks per query block; must be in [1, {nk}]")
    if not alpha.is_floating_point() or (alpha.dim() > 0 and alpha.device != q.device):
        raise TypeError(f"alpha must be a floating-point tensor on {q.device}, got {alpha.dtype} on {alpha.device}")
    target = (b, h, nq)[max(0, 3 - alpha.dim()):]
    if alpha.dim() > 3 or any(s != 1 and s != t for s, t in zip(alpha.shape, target)):
        raise ValueError(f"alpha of shape {tuple(alpha.shape)} does not broadcast to [B, H, nq] = [{b}, {h}, {nq}]")


def check_router_args(q, k, proj_q, proj_k, block_q: int, block_k: int, topk: int, layout: str) -> None:
    """The arguments of sla2::router, for callers outside SLA2Attention (backend.block_router)."""
    check_qkv_tensors(q, k, k, layout)
    _check_blocks(block_q, block_k)
    b, h, n, d = dims(q, layout)
    nk = num_blocks(n, block_k)
    for name, w in (("proj_q", proj_q), ("proj_k", proj_k)):
        if tuple(w.shape) != (h, d, d) or w.device != q.device:
            raise ValueError(f"{name} must be [H, D, D] = [{h}, {d}, {d}] on {q.device}, "
                             f"got {tuple(w.shape)} on {w.device}")
    if not 1 <= topk <= nk:
        raise ValueError(f"topk must be in [1, {nk}] (the number of key blocks), got {topk}")
