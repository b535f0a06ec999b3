"""Input validation for SLA2Attention: one clear line per problem, raised before any work."""

from __future__ import annotations

import torch

LAYOUTS = ("bnhd", "bhnd")
VARIANTS = ("sla2", "sla", "full")
TOPK_MODES = ("hard", "soft")
BACKENDS = ("auto", "reference", "triton")


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
