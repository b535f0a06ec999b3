"""The backward of SLA2 from the forward's o and lse, in plain PyTorch: the formula the backward kernels implement
(the custom op's CPU implementation), checked against autograd through the reference."""

from __future__ import annotations

import torch

from .blocks import block_token_counts, expand_block_mask, expand_query_blocks, mean_pool, num_blocks
from .branches import linear_block_sums, phi
from .indexed import acc_dtype, bhnd, block_alpha, dims, index_mask


def pad_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """[B, H, N, D] -> [B, H, nb, block, D], zero rows past N."""
    b, h, n, d = x.shape
    nb = num_blocks(n, block)
    return torch.nn.functional.pad(x, (0, 0, 0, nb * block - n)).view(b, h, nb, block, d)


def phi_backward(fx: torch.Tensor, dphi: torch.Tensor) -> torch.Tensor:
    """Through φ = softmax over head_dim: dx = φ ⊙ (dφ − rowsum(dφ ⊙ φ))."""
    return fx * (dphi - (dphi * fx).sum(dim=-1, keepdim=True))


def reference_backward(do, q, k, v, o, lse, indices, alpha, block_q: int, block_k: int, layout: str, o_s=None):
    """The kernels' backward formula (docs/method.md, Backward) in plain PyTorch, from the forward's lse.

    Dense in the sparse branch (O(N²): CPU, tests, tiny models). It is autograd-free on purpose: a custom op's
    implementation runs below the autograd dispatch key. Returns (dq, dk, dv) in q's layout and dtype and
    dalpha [B, H, nq] (at least float32). Autograd through the reference
    (tests/attention/test_ops.py) is its oracle. With the low-bit forward's lse it is QAT's straight-through
    gradient, and o_s (the low-bit forward's sparse output O_s^q, o's layout) makes dα the exact derivative of
    that forward: its sparse term is dO·O_s^q instead of the bf16 P's dO·O_s (docs/method.md, Backward).
    o is not read: every other term comes from P (recomputed from lse) and the linear branch, so nothing
    divides by α; the kernels read o only as a centring constant that cancels exactly.
    """
    b, h, n, d = dims(q, layout)
    nq, nk = num_blocks(n, block_q), num_blocks(n, block_k)
    acc = acc_dtype(q.dtype)
    qr, kr, vr, dor = (bhnd(t, layout).to(acc) for t in (q, k, v, do))
    mask = index_mask(indices, nk)
    linear = indices.shape[-1] < nk
    a = block_alpha(alpha, b, h, nq, not linear).to(acc)
    a_tok = expand_query_blocks(a, n, block_q)  # [B, H, N, 1]
    scale = d ** -0.5
    # Sparse branch: P from the forward's lse on the selected blocks; dO_s = α dO. Ds = dO·O_s = rowsum(P ⊙ dO Vᵀ)
    # exactly, so Δ = α Ds and dα never recover O_s from O by dividing by α (α → 0 is reachable).
    tok = expand_block_mask(mask, n, n, block_q, block_k)
    p = torch.where(tok, torch.exp(qr @ kr.transpose(-1, -2) * scale - lse.to(acc)[..., None]), 0)
    dp = dor @ vr.transpose(-1, -2)
    d_s = (p * dp).sum(dim=-1)
    dos = a_tok * dor
    if linear:
        hb, zb = linear_block_sums(kr, vr, block_k)  # [B, H, nk, D, D], [B, H, nk, D]
        sel = mask.to(acc)
        h_i = hb.sum(dim=2, keepdim=True) - torch.einsum("bhij,bhjde->bhide", sel, hb)
        z_i = zb.sum(dim=2, keepdim=True) - torch.einsum("bhij,bhjd->bhid", sel, zb)
        fq = pad_blocks(phi(qr), block_q)  # [B, H, nq, bq, D]
        den = (fq @ z_i[..., None]).squeeze(-1)
        inv = torch.where(den > 0, 1 / torch.where(den > 0, den, 1), 0)
        o_l = (fq @ h_i) * inv[..., None]
        g = pad_blocks(dor, block_q) * (1 - a)[..., None, None]  # (1 − α) dO per block
        d_l = (pad_blocks(dor, block_q) * o_l).sum(dim=-1)  # [B, H, nq, bq]
        w = (1 - a)[..., None] * d_l
        dfq = (g @ h_i.transpose(-1, -2) - w[..., None] * z_i[..., None, :]) * inv[..., None]
        dq_lin = phi_backward(fq, dfq).flatten(2, 3)[:, :, :n]
        psi = fq * inv[..., None]
        dh_i = psi.transpose(-1, -2) @ g  # [B, H, nq, D, D]
        dz_i = -(psi * w[..., None]).sum(dim=-2)  # [B, H, nq, D]
        unsel = 1 - sel
        dh_j = torch.einsum("bhij,bhide->bhjde", unsel, dh_i)  # Σ over the query blocks that did not select j
        dz_j = torch.einsum("bhij,bhid->bhjd", unsel, dz_i)
        fk = pad_blocks(phi(kr), block_k)
        vb = pad_blocks(vr, block_k)
        dv_lin = (fk @ dh_j).flatten(2, 3)[:, :, :n]
        dfk = vb @ dh_j.transpose(-1, -2) + dz_j[..., None, :]
        dk_lin = phi_backward(fk, dfk).flatten(2, 3)[:, :, :n]
        d_l_tok = d_l.flatten(2, 3)[:, :, :n]
        # dα_I = Σ_{i∈I} dO_i·(O_s,i − O_l,i), with the O_s that the forward mixed in
        d_s_mixed = d_s if o_s is None else (dor * bhnd(o_s, layout).to(acc)).sum(dim=-1)
        dalpha = mean_pool((d_s_mixed - d_l_tok)[..., None], block_q)[..., 0] * block_token_counts(n, block_q,
                                                                                                  q.device, acc)
    else:
        dq_lin = dk_lin = dv_lin = 0
        dalpha = torch.zeros(b, h, nq, dtype=acc, device=q.device)
    ds = p * a_tok * (dp - d_s[..., None])  # dS = P ⊙ (dP_s − Δ) with dP_s = α dO Vᵀ, Δ = α Ds
    dq = ds @ kr * scale + dq_lin
    dk = ds.transpose(-1, -2) @ qr * scale + dk_lin
    dv = p.transpose(-1, -2) @ dos + dv_lin
    back = (lambda t: t.transpose(1, 2)) if layout == "bnhd" else (lambda t: t)
    return back(dq).to(q.dtype), back(dk).to(k.dtype), back(dv).to(v.dtype), dalpha.to(acc)
