"""Fake-quantised low-bit sparse branch (SLA2.md §5) and its straight-through estimator.

Same arithmetic as the INT8/FP8 kernel, in floating point: values are rounded to the INT8 grid and to
FP8 e4m3 exactly as the hardware formats would hold them, then multiplied in the input's dtype.
  Q  -> INT8, one scale per (head, query block):        s_q = max|Q_i| / 127
  K  -> smoothed (K − mean_tokens K), INT8 per key block: s_k = max|K_j| / 127
  S  =  (Q̂ K̂ᵀ) s_q s_k / √D       (smoothing shifts each row by a constant: softmax unchanged)
  P̃  =  exp(S − rowmax) ∈ [0, 1]  -> FP8 e4m3 at scale 448 (the e4m3 maximum)
  V  -> FP8 e4m3, one scale per (head, channel) over all tokens: s_v = max|V[:, c]| / 448
  O  =  (P̂ V̂) s_v / l, with l = rowsum of the unquantised P̃ (fp32)
  lse = rowmax + log l + q·mean(K)/√D   (on the scale of the unsmoothed scores)
"""

from __future__ import annotations

import math

import torch

from .blocks import expand_block_mask, num_blocks, smooth_k

INT8_MAX = 127.0
FP8_E4M3_MAX = 448.0
# Keeps an all-zero block's scale positive, so dequantisation never divides by zero.
MIN_SCALE = 1e-12


def block_absmax_scale(x: torch.Tensor, block: int, qmax: float) -> torch.Tensor:
    """[B, H, N, D] -> per-block scale [B, H, nb] = max|x_block| / qmax."""
    b, h, n, d = x.shape
    nb = num_blocks(n, block)
    padded = torch.nn.functional.pad(x.abs(), (0, 0, 0, nb * block - n))
    return (padded.view(b, h, nb, block * d).amax(dim=-1) / qmax).clamp_min(MIN_SCALE)


def quantize_int8_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer-valued x̂ in [-127, 127] (same float dtype) and its per-block scale [B, H, nb]."""
    scale = block_absmax_scale(x, block, INT8_MAX)
    per_token = scale.repeat_interleave(block, dim=-1)[..., : x.shape[-2], None]
    return torch.round(x / per_token).clamp(-INT8_MAX, INT8_MAX), scale


def round_to_fp8_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest e4m3 value, saturating at ±448 (a cast past the range would give NaN)."""
    return x.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).to(x.dtype)


def fake_quant_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_blocks: torch.Tensor, block_q: int, block_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-bit sparse branch over the selected blocks: (O_s, lse), both in q's dtype (lse like the kernel)."""
    n_q, n_k = q.shape[-2], k.shape[-2]
    q_hat, s_q = quantize_int8_blocks(q, block_q)
    k_hat, s_k = quantize_int8_blocks(smooth_k(k), block_k)
    scale_tok = s_q.repeat_interleave(block_q, dim=-1)[..., :n_q, None] * s_k.repeat_interleave(block_k, dim=-1)[
        ..., None, :n_k
    ]
    s = (q_hat @ k_hat.transpose(-1, -2)) * scale_tok / math.sqrt(q.shape[-1])
    tok = expand_block_mask(mask_blocks, n_q, n_k, block_q, block_k)
    s = s.masked_fill(~tok, float("-inf"))
    row_max = s.amax(dim=-1, keepdim=True)
    p = torch.exp(s - row_max)
    l = p.sum(dim=-1, keepdim=True)
    p_hat = round_to_fp8_e4m3(p * FP8_E4M3_MAX) / FP8_E4M3_MAX
    s_v = (v.abs().amax(dim=-2, keepdim=True) / FP8_E4M3_MAX).clamp_min(MIN_SCALE)  # [B, H, 1, Dv]
    v_hat = round_to_fp8_e4m3(v / s_v)
    o = (p_hat @ v_hat) * s_v / l
    # Smoothing shifted row i of S by q_i·mean(K)/√D; adding it back puts lse on the scale of the
    # original Q, K, which is what the straight-through backward recomputes P with.
    shift = (q @ k.mean(dim=-2, keepdim=True).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return o, (row_max + torch.log(l) + shift).squeeze(-1)


def straight_through(exact: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """Forward value of `approx`, gradient of `exact` (QAT's straight-through estimator, SLA2.md §5)."""
    return exact + (approx - exact).detach()
