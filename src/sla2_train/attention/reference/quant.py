"""Fake-quantised low-bit sparse branch and its straight-through estimator (docs/method.md, Low-bit sparse branch
and QAT).

Same arithmetic as the INT8/FP8 kernel, in floating point: values are rounded to the INT8 grid and to
FP8 e4m3 exactly as the hardware formats would hold them, then multiplied in the input's dtype.
  Q  -> INT8, one scale per (head, query block):        s_q = max|Q_i| / 127
  K  -> smoothed (K − mean_tokens K), INT8 per key block: s_k = max|K_j| / 127
  S  =  (Q̂ K̂ᵀ) s_q s_k / √D       (smoothing shifts each row by a constant: softmax unchanged)
  P̃_j = exp(S_j − m_j) ∈ [0, 1] -> FP8 e4m3 at scale 448 (the e4m3 maximum), per selected key block j
  V  -> FP8 e4m3, one scale per (head, channel) over all tokens: s_v = max|V[:, c]| / 448
  O  =  Σ_j (P̂_j V̂_j) e^(m_j − m) s_v / l, with l = rowsum of the unquantised exp(S − m) (fp32)
  lse = m + log l + q·mean(K)/√D   (on the scale of the unsmoothed scores; m the final row maximum)

Which maximum m_j P̃ is rounded against matters: e4m3 keeps 3 mantissa bits, so P̃'s rounding moves with
m_j; on flat attention (random data) the two choices below differ by 0.5–2% relative L1, comparable to the
quantisation error itself (~3%). The default (running_max=True) is SageAttention2's online-softmax
arithmetic: m_j is the running maximum over the row's selected key blocks up to and including block j, and
the accumulator is rescaled by e^(m_{j−1} − m_j) at each step, so the kernel needs one pass over the blocks
(FwdConfig.exact_max=False). The running maximum depends on the order of the blocks; here it is ascending
key-block order, the order of the router's sorted index lists that the kernel walks. running_max=False
rounds every P̃_j against the final row maximum, m_j = m (a kernel needs a second pass for it:
FwdConfig.exact_max=True).
"""

from __future__ import annotations

import math

import torch

# The kernels' own constants (a module that imports no triton): one definition for the kernels and this twin.
from sla2_kernels.constants import FP8_E4M3_MAX, INT8_MAX, MIN_SCALE

from .blocks import expand_block_mask, num_blocks, smooth_k


def block_absmax_scale(x: torch.Tensor, block: int, qmax: float) -> torch.Tensor:
    """[B, H, N, D] -> per-block scale [B, H, nb] = max|x_block| / qmax."""
    b, h, n, d = x.shape
    nb = num_blocks(n, block)
    padded = torch.nn.functional.pad(x.abs(), (0, 0, 0, nb * block - n))
    return (padded.reshape(b, h, nb, block * d).amax(dim=-1) / qmax).clamp_min(MIN_SCALE)


def quantize_int8_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer-valued x̂ in [-127, 127] (same float dtype) and its per-block scale [B, H, nb]."""
    scale = block_absmax_scale(x, block, INT8_MAX)
    per_token = scale.repeat_interleave(block, dim=-1)[..., : x.shape[-2], None]
    return torch.round(x / per_token).clamp(-INT8_MAX, INT8_MAX), scale


def round_to_fp8_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest e4m3 value, saturating at ±448 (a cast past the range would give NaN)."""
    return x.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).to(x.dtype)


def quantize_fp8_channels(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """V̂ = e4m3(V / s_v) (e4m3 values in v's dtype) and the per-(head, channel) scale s_v = max_tokens |V| / 448,
    [B, H, 1, D]."""
    s_v = (v.abs().amax(dim=-2, keepdim=True) / FP8_E4M3_MAX).clamp_min(MIN_SCALE)
    return round_to_fp8_e4m3(v / s_v), s_v


def quantised_kv(k: torch.Tensor, v: torch.Tensor, block_k: int):
    """The low-bit branch's K and V side, as the kernels' precompute pass stores it (twin of
    sla2_kernels.precompute(..., quant=True)): (K̂ [B, H, N, D], s_k [B, H, nk], V̂ [B, H, N, D], s_v [B, H, D],
    μ_K [B, H, D]); K̂ integer-valued (smoothed K, INT8 per key block), V̂ e4m3 values, in k's dtype."""
    mean = k.mean(dim=-2, keepdim=True)
    k_hat, s_k = quantize_int8_blocks(k - mean, block_k)
    v_hat, s_v = quantize_fp8_channels(v)
    return k_hat, s_k, v_hat, s_v.squeeze(-2), mean.squeeze(-2)


def quantised_scores(q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int) -> torch.Tensor:
    """S = (Q̂ K̂ᵀ) s_q s_k / √D of the smoothed, INT8-rounded Q and K: [B, H, N_q, N_k]."""
    n_q, n_k = q.shape[-2], k.shape[-2]
    q_hat, s_q = quantize_int8_blocks(q, block_q)
    k_hat, s_k = quantize_int8_blocks(smooth_k(k), block_k)
    scale_tok = s_q.repeat_interleave(block_q, dim=-1)[..., :n_q, None] * s_k.repeat_interleave(block_k, dim=-1)[
        ..., None, :n_k
    ]
    return (q_hat @ k_hat.transpose(-1, -2)) * scale_tok / math.sqrt(q.shape[-1])


def running_block_max(s: torch.Tensor, block_k: int) -> torch.Tensor:
    """Running row maximum over ascending key blocks, per token column: [B, H, N_q, N_k] -> same shape.

    Column c holds max(S[:, :end of c's key block]): the maximum an online softmax that walks the key
    blocks in ascending order has seen once it has taken c's block. s is −inf off the selection, so
    unselected blocks leave the maximum as it was (−inf before the first selected block).
    """
    b, h, n_q, n_k = s.shape
    nk = num_blocks(n_k, block_k)
    padded = torch.nn.functional.pad(s, (0, nk * block_k - n_k), value=float("-inf"))  # ragged last block
    block_max = padded.view(b, h, n_q, nk, block_k).amax(dim=-1)  # [B, H, N_q, nk]
    m_run = block_max.cummax(dim=-1).values
    return m_run.repeat_interleave(block_k, dim=-1)[..., :n_k]


def masked_exp(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """exp(x) where keep, exactly 0 elsewhere. Masking before the exp also replaces the NaN of −inf − (−inf)
    off the selection (before a row's first selected block), in the forward and in autograd alike."""
    return torch.exp(x.masked_fill(~keep, float("-inf")))


def fake_quant_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask_blocks: torch.Tensor,
    block_q: int,
    block_k: int,
    *,
    running_max: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-bit sparse branch over the selected blocks: (O_s, lse), both in q's dtype (lse like the kernel).

    running_max: round P̃ against the running maximum over ascending key blocks (SageAttention2, the one-pass
    kernel, default) or against the final row maximum (False; the two-pass kernel, FwdConfig.exact_max=True).
    """
    tok = expand_block_mask(mask_blocks, q.shape[-2], k.shape[-2], block_q, block_k)
    s = quantised_scores(q, k, block_q, block_k).masked_fill(~tok, float("-inf"))
    row_max = s.amax(dim=-1, keepdim=True)  # [B, H, N_q, 1]: the final maximum m
    m = running_block_max(s, block_k) if running_max else row_max  # what each P̃_j is rounded against
    p_hat = round_to_fp8_e4m3(masked_exp(s - m, tok) * FP8_E4M3_MAX) / FP8_E4M3_MAX
    # The online rescaling e^(m_{j−1} − m_j) at every later step compounds to e^(m_j − m); 1 with the final max.
    weight = masked_exp(m - row_max, tok)
    l = masked_exp(s - row_max, tok).sum(dim=-1, keepdim=True)  # equals the kernel's rescaled running sum
    v_hat, s_v = quantize_fp8_channels(v)  # s_v [B, H, 1, Dv]
    o = ((p_hat * weight) @ v_hat) * s_v / l
    # Smoothing shifted row i of S by q_i·mean(K)/√D; adding it back puts lse on the scale of the
    # original Q, K, which is what the straight-through backward recomputes P with.
    shift = (q @ k.mean(dim=-2, keepdim=True).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return o, (row_max + torch.log(l) + shift).squeeze(-1)


def straight_through(exact: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """Forward value of `approx`, gradient of `exact`: QAT's straight-through estimator (docs/method.md, Low-bit
    sparse branch and QAT)."""
    return exact + (approx - exact).detach()
