"""SLA2 forward in plain PyTorch, computed per block: the oracle at real sizes (GPU tests, bench --check).

sla2_train.attention.reference expands block masks to dense [N, N] token masks, which at N = 32760 needs
tens of GB; this version gathers only the selected key blocks, so it runs at the Wan shapes on one GPU.
Same arithmetic as the reference (fp32, or float64 for float64 inputs; fake-quant rounds P̃ against the running
maximum over the selected blocks in the indices' order, as the one-pass kernel, or with running_max=False
against the final row maximum); tests/kernels checks it against the reference at small sizes. Inputs
[B, H, N, D] (any strides), indices [B, H, nq, topk], ascending like the router's (the reference's order).
"""

from __future__ import annotations

import math

import torch

from .constants import FP8_E4M3_MAX as FP8_MAX
from .constants import INT8_MAX, MIN_SCALE


def _widen(x: torch.Tensor) -> torch.Tensor:
    """fp32, or float64 for float64 inputs (the GPU tests' float64 oracle on a slice of heads)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """[B, H, N, D] -> zero-padded [B, H, nb, block, D]."""
    b, h, n, d = x.shape
    nb = -(-n // block)
    return torch.nn.functional.pad(x, (0, 0, 0, nb * block - n)).view(b, h, nb, block, d)


def _gather(xb: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """xb [B, H, nb, blk, D], indices [B, H, nq, k] -> [B, H, nq, k·blk, D]."""
    b, h, nb, blk, d = xb.shape
    nq, k = indices.shape[-2:]
    idx = indices.long().reshape(b, h, nq * k, 1, 1).expand(-1, -1, -1, blk, d)
    return torch.gather(xb, 2, idx).view(b, h, nq, k * blk, d)


def _key_valid(n: int, block_k: int, indices: torch.Tensor) -> torch.Tensor:
    rows = indices.long()[..., None] * block_k + torch.arange(block_k, device=indices.device)
    return (rows < n).flatten(-2)  # [B, H, nq, k·bk]


def _round_fp8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype)


def _running_max(s: torch.Tensor, block_k: int) -> torch.Tensor:
    """[B, H, nq, bq, k·bk] scores -> the running row maximum over the k gathered blocks, per column (same shape):
    what the one-pass kernel has seen once it has taken that column's block (SageAttention2's arithmetic)."""
    block_max = s.unflatten(-1, (-1, block_k)).amax(dim=-1)  # [B, H, nq, bq, k]; every block has a valid key
    return block_max.cummax(dim=-1).values.repeat_interleave(block_k, dim=-1)


def sparse_branch(q, k, v, indices, block_q, block_k, quant=False, running_max=True):
    """(O_s [B, H, N, D], lse [B, H, N]) over the selected blocks, fp32. running_max: see the module docstring
    (low-bit only)."""
    q, k, v = (_widen(t) for t in (q, k, v))
    b, h, n, d = q.shape
    qb = _blocks(q, block_q)  # [B, H, nq, bq, D]
    valid = _key_valid(n, block_k, indices)[..., None, :]  # [B, H, nq, 1, k·bk]
    if quant:
        mean = k.mean(dim=-2, keepdim=True)
        s_q = (qb.abs().amax(dim=(-1, -2)) / INT8_MAX).clamp_min(MIN_SCALE)  # [B, H, nq]
        kb = _blocks(k - mean, block_k)
        s_k = (kb.abs().amax(dim=(-1, -2)) / INT8_MAX).clamp_min(MIN_SCALE)  # [B, H, nk]
        q_hat = torch.round(qb / s_q[..., None, None]).clamp(-INT8_MAX, INT8_MAX)
        k_hat = torch.round(kb / s_k[..., None, None]).clamp(-INT8_MAX, INT8_MAX)
        ks = _gather(k_hat, indices)
        sk_tok = torch.gather(s_k, 2, indices.long().flatten(-2)).view(indices.shape)
        sk_tok = sk_tok.repeat_interleave(block_k, dim=-1)[..., None, :]
        s = (q_hat @ ks.transpose(-1, -2)) * s_q[..., None, None] * sk_tok / math.sqrt(d)
    else:
        s = (qb @ _gather(_blocks(k, block_k), indices).transpose(-1, -2)) / math.sqrt(d)
    s = s.masked_fill(~valid, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    p = torch.exp(s - m)
    l = p.sum(dim=-1, keepdim=True)
    if quant:
        s_v = (v.abs().amax(dim=-2, keepdim=True) / FP8_MAX).clamp_min(MIN_SCALE)  # [B, H, 1, D]
        vs = _gather(_blocks(_round_fp8(v / s_v), block_k), indices)
        m_p = _running_max(s, block_k) if running_max else m  # the maximum each P̃ block is rounded against
        p_hat = _round_fp8(torch.exp(s - m_p) * FP8_MAX) / FP8_MAX
        # the kernel's rescaling by e^(m_{j−1} − m_j) at every later step compounds to e^(m_j − m)
        o = (p_hat * torch.exp(m_p - m)) @ vs * s_v[:, :, None] / l
        shift = (qb @ mean[:, :, None].transpose(-1, -2)) / math.sqrt(d)
        lse = m + torch.log(l) + shift
    else:
        o = (p @ _gather(_blocks(v, block_k), indices)) / l
        lse = m + torch.log(l)
    return o.reshape(b, h, -1, d)[:, :, :n], lse.reshape(b, h, -1)[:, :, :n]


def linear_branch(q, k, v, indices, block_q, block_k):
    """O_l [B, H, N, D] = φQ(H_tot − Σ_sel h_j) / φQ·(Z_tot − Σ_sel z_j), fp32; 0 if all blocks selected."""
    q, k, v = (_widen(t) for t in (q, k, v))
    b, h, n, d = q.shape
    fk = _blocks(torch.softmax(k, dim=-1), block_k)  # padded rows are 0 after the pad
    hb = fk.transpose(-1, -2) @ _blocks(v, block_k)  # [B, H, nk, D, D]
    zb = fk.sum(dim=-2)  # [B, H, nk, D]
    nk = hb.shape[2]
    sel = torch.zeros(*indices.shape[:-1], nk, device=q.device, dtype=q.dtype)
    sel = sel.scatter_(-1, indices.long(), 1.0)  # [B, H, nq, nk]
    h_i = hb.sum(dim=2, keepdim=True) - (sel @ hb.flatten(-2)).view(b, h, -1, d, d)
    z_i = zb.sum(dim=2, keepdim=True) - sel @ zb
    fq = _blocks(torch.softmax(q, dim=-1), block_q)
    den = fq @ z_i[..., None]
    # Padded query rows have φQ = 0 (den 0) and are cropped below; a safe den keeps autograd through them finite.
    o = (fq @ h_i) / torch.where(den == 0, 1.0, den)
    o = torch.where((sel.sum(-1) == nk)[..., None, None], 0.0, o)
    return o.reshape(b, h, -1, d)[:, :, :n]


def sla2_forward(q, k, v, indices, alpha, block_q, block_k, quant=False, running_max=True):
    """(o [B, H, N, D], lse [B, H, N], fp32 or float64); α broadcastable to [B, H, nq], forced to 1 when all
    selected."""
    b, h, n, d = q.shape
    nq, nk = -(-n // block_q), -(-n // block_k)
    o_s, lse = sparse_branch(q, k, v, indices, block_q, block_k, quant, running_max)
    if indices.shape[-1] == nk:
        return o_s, lse
    o_l = linear_branch(q, k, v, indices, block_q, block_k)
    a = torch.as_tensor(alpha, dtype=o_s.dtype, device=q.device).expand(b, h, nq)
    a = a.repeat_interleave(block_q, dim=-1)[..., :n, None]
    return a * o_s + (1 - a) * o_l, lse


def router_scores(q, k, proj_q, proj_k, block_q, block_k):
    """(Q̄ Wq)(K̄ Wk)ᵀ/√D with Q̄ = mean-pool(Q), K̄ = mean-pool(K − mean_tokens K); fp32 [B, H, nq, nk]."""
    q, k = q.float(), k.float()
    n, d = q.shape[-2:]

    def pool(x, block):
        counts = torch.full((-(-n // block),), float(block), device=x.device)
        counts[-1] = n - (counts.numel() - 1) * block
        return _blocks(x, block).sum(dim=3) / counts[:, None]

    qp = torch.einsum("bhnd,hde->bhne", pool(q, block_q), proj_q.float())
    kp = torch.einsum("bhnd,hde->bhne", pool(k - k.mean(dim=-2, keepdim=True), block_k), proj_k.float())
    return qp @ kp.transpose(-1, -2) / math.sqrt(d)
