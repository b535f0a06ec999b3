"""SLA2 as torch.library custom ops, so that torch.compile(fullgraph=True) traces through the attention.

    torch.ops.sla2.router(q, k, proj_q, proj_k, block_q, block_k, topk, layout) -> (scores, indices int32)
    torch.ops.sla2.attention(q, k, v, indices, alpha, block_q, block_k, quant, layout)
        -> (o, lse [B, H, N], H_I, Z_I)   (the last two: the linear branch's state kept for the backward)
    torch.ops.sla2.attention_backward(do, q, k, v, o, lse, indices, alpha, H_I, Z_I,
                                      block_q, block_k, quant, layout)
        -> (dq, dk, dv, dalpha [B, H, nq] fp32, or float64 for float64 inputs)

Each op has a fake (meta) implementation for tracing and one real implementation that dispatches on the
inputs: the Triton kernels of `sla2_kernels` on CUDA where they cover the call (bf16/fp16, head_dim 64/128,
blocks 64/128), the pure-PyTorch reference everywhere else (CPU, other dtypes): the same function, so CPU
tests and torch.compile on CPU exercise the very graph that runs on the GPU. `attention` carries its autograd
formula (register_autograd): gradients for q, k, v and α; indices and lse get none (hard Top-k; lse is an
auxiliary output). With quant=True the forward is the low-bit sparse branch and the backward the bf16 one at
the original q, k, v using the forward's o and lse (QAT straight-through, SLA2.md §5), in the CPU
implementation too (reference_backward at the fake-quant o and lse). Only the module's reference path
(backend="reference") differs: reference.straight_through gives the exact gradient of the bf16 forward.

alpha is at least fp32 and broadcastable to [B, H, nq]; it is forced to 1 when every key block is selected
(reference.effective_alpha), and its gradient comes back in its own shape.
"""

from __future__ import annotations

import torch

from . import reference as ref
from .checks import check_qkv_tensors

KERNEL_DTYPES = (torch.bfloat16, torch.float16)
KERNEL_HEAD_DIMS = (64, 128)
KERNEL_BLOCKS = (64, 128)


def _load_kernels():
    """`sla2_kernels`, or None and the reason (triton missing or broken: a CPU-only install)."""
    try:
        import sla2_kernels

        return sla2_kernels, None
    except Exception as err:
        return None, err


sla2_kernels, kernels_import_error = _load_kernels()
try:
    if sla2_kernels is None:
        raise ImportError(kernels_import_error)
    from sla2_kernels import autograd as kernel_autograd
except Exception as err:  # a forward-only build: no backward kernels
    kernel_autograd, backward_import_error = None, err
else:
    backward_import_error = None


def kernels_cover(q: torch.Tensor, block_q: int, block_k: int) -> tuple[bool, str]:
    """(True, "") when the Triton kernels compute this call; else (False, the reason)."""
    if sla2_kernels is None:
        return False, f"sla2_kernels cannot be imported ({kernels_import_error})"
    if not q.is_cuda:
        return False, "inputs are not on a CUDA device"
    if q.dtype not in KERNEL_DTYPES:
        return False, f"dtype {q.dtype} is not one of {KERNEL_DTYPES}"
    if q.shape[-1] not in KERNEL_HEAD_DIMS:
        return False, f"head_dim {q.shape[-1]} is not one of {KERNEL_HEAD_DIMS}"
    if block_q not in KERNEL_BLOCKS or block_k not in KERNEL_BLOCKS:
        return False, f"block sizes ({block_q}, {block_k}) are not in {KERNEL_BLOCKS}"
    return True, ""


def _bhnd(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.transpose(1, 2) if layout == "bnhd" else t


def _dims(q: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    b, h, n, d = _bhnd(q, layout).shape
    return b, h, n, d


def _check_blocks(block_q: int, block_k: int) -> None:
    for name, blk in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(blk, int) or blk < 1:
            raise ValueError(f"{name} must be a positive int, got {blk!r}")


def check_attention_args(q, k, v, indices, alpha, block_q: int, block_k: int, layout: str) -> None:
    """One clear line for a bad argument of sla2::attention (run by its real and its fake implementation)."""
    check_qkv_tensors(q, k, v, layout)
    _check_blocks(block_q, block_k)
    b, h, n, _ = _dims(q, layout)
    nq, nk = ref.num_blocks(n, block_q), ref.num_blocks(n, block_k)
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
    """One clear line for a bad argument of sla2::router (run by its real and its fake implementation)."""
    check_qkv_tensors(q, k, k, layout)
    _check_blocks(block_q, block_k)
    b, h, n, d = _dims(q, layout)
    nk = ref.num_blocks(n, block_k)
    for name, w in (("proj_q", proj_q), ("proj_k", proj_k)):
        if tuple(w.shape) != (h, d, d) or w.device != q.device:
            raise ValueError(f"{name} must be [H, D, D] = [{h}, {d}, {d}] on {q.device}, "
                             f"got {tuple(w.shape)} on {w.device}")
    if not 1 <= topk <= nk:
        raise ValueError(f"topk must be in [1, {nk}] (the number of key blocks), got {topk}")


def _mask(indices: torch.Tensor, nk: int) -> torch.Tensor:
    shape = (*indices.shape[:-1], nk)
    return torch.zeros(shape, dtype=torch.bool, device=indices.device).scatter_(-1, indices.long(), True)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _pad_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """[B, H, N, D] -> [B, H, nb, block, D], zero rows past N."""
    b, h, n, d = x.shape
    nb = ref.num_blocks(n, block)
    return torch.nn.functional.pad(x, (0, 0, 0, nb * block - n)).view(b, h, nb, block, d)


def _phi_backward(phi: torch.Tensor, dphi: torch.Tensor) -> torch.Tensor:
    return phi * (dphi - (dphi * phi).sum(dim=-1, keepdim=True))


def reference_backward(do, q, k, v, o, lse, indices, alpha, block_q: int, block_k: int, layout: str):
    """The kernels' backward formula (SLA2.md §6) in plain PyTorch, from the forward's o and lse.

    Dense in the sparse branch (O(N²): CPU, tests, tiny models). It is autograd-free on purpose: a custom op's
    implementation runs below the autograd dispatch key. Returns (dq, dk, dv) in q's layout and dtype and
    dalpha [B, H, nq] (at least float32). Autograd through the reference (tests/attention/test_ops.py) is its oracle.
    """
    b, h, n, d = _dims(q, layout)
    nq, nk = ref.num_blocks(n, block_q), ref.num_blocks(n, block_k)
    acc = _acc_dtype(q.dtype)
    qr, kr, vr, orr, dor = (_bhnd(t, layout).to(acc) for t in (q, k, v, o, do))
    mask = _mask(indices, nk)
    linear = indices.shape[-1] < nk
    a = _effective_alpha(alpha, b, h, nq, not linear).to(acc)
    a_tok = ref.expand_query_blocks(a, n, block_q)  # [B, H, N, 1]
    scale = d ** -0.5
    # Sparse branch: P from the forward's lse on the selected blocks; dO_s = α dO; Δ = Do − (1 − α) Dl.
    tok = ref.expand_block_mask(mask, n, n, block_q, block_k)
    p = torch.where(tok, torch.exp(qr @ kr.transpose(-1, -2) * scale - lse.to(acc)[..., None]), 0)
    d_o = (dor * orr).sum(dim=-1)
    dos = a_tok * dor
    if linear:
        hb, zb = ref.linear_block_sums(kr, vr, block_k)  # [B, H, nk, D, D], [B, H, nk, D]
        sel = mask.to(acc)
        h_i = hb.sum(dim=2, keepdim=True) - torch.einsum("bhij,bhjde->bhide", sel, hb)
        z_i = zb.sum(dim=2, keepdim=True) - torch.einsum("bhij,bhjd->bhid", sel, zb)
        fq = _pad_blocks(ref.phi(qr), block_q)  # [B, H, nq, bq, D]
        den = (fq @ z_i[..., None]).squeeze(-1)
        inv = torch.where(den > 0, 1 / torch.where(den > 0, den, 1), 0)
        o_l = (fq @ h_i) * inv[..., None]
        g = _pad_blocks(dor, block_q) * (1 - a)[..., None, None]  # (1 − α) dO per block
        d_l = (_pad_blocks(dor, block_q) * o_l).sum(dim=-1)  # [B, H, nq, bq]
        w = (1 - a)[..., None] * d_l
        dfq = (g @ h_i.transpose(-1, -2) - w[..., None] * z_i[..., None, :]) * inv[..., None]
        dq_lin = _phi_backward(fq, dfq).flatten(2, 3)[:, :, :n]
        psi = fq * inv[..., None]
        dh_i = psi.transpose(-1, -2) @ g  # [B, H, nq, D, D]
        dz_i = -(psi * w[..., None]).sum(dim=-2)  # [B, H, nq, D]
        unsel = 1 - sel
        dh_j = torch.einsum("bhij,bhide->bhjde", unsel, dh_i)  # Σ over the query blocks that did not select j
        dz_j = torch.einsum("bhij,bhid->bhjd", unsel, dz_i)
        fk = _pad_blocks(ref.phi(kr), block_k)
        vb = _pad_blocks(vr, block_k)
        dv_lin = (fk @ dh_j).flatten(2, 3)[:, :, :n]
        dfk = vb @ dh_j.transpose(-1, -2) + dz_j[..., None, :]
        dk_lin = _phi_backward(fk, dfk).flatten(2, 3)[:, :, :n]
        d_l_tok = d_l.flatten(2, 3)[:, :, :n]
        delta = d_o - (1 - a_tok[..., 0]) * d_l_tok
        blk_sum = ref.mean_pool((d_o - d_l_tok)[..., None], block_q)[..., 0] * ref.block_token_counts(
            n, block_q, q.device, acc)
        dalpha = blk_sum / a
    else:
        delta = d_o
        dq_lin = dk_lin = dv_lin = 0
        dalpha = torch.zeros(b, h, nq, dtype=acc, device=q.device)
    dp = dos @ vr.transpose(-1, -2)
    ds = p * (dp - delta[..., None])
    dq = ds @ kr * scale + dq_lin
    dk = ds.transpose(-1, -2) @ qr * scale + dk_lin
    dv = p.transpose(-1, -2) @ dos + dv_lin
    back = (lambda t: t.transpose(1, 2)) if layout == "bnhd" else (lambda t: t)
    return back(dq).to(q.dtype), back(dk).to(k.dtype), back(dv).to(v.dtype), dalpha.to(acc)


# ------------------------------------------------------------------------------------------------ router


@torch.library.custom_op("sla2::router", mutates_args=())
def router(
    q: torch.Tensor, k: torch.Tensor, proj_q: torch.Tensor, proj_k: torch.Tensor,
    block_q: int, block_k: int, topk: int, layout: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block scores [B, H, nq, nk] (fp32; float64 for float64 inputs) and the Top-k key blocks int32
    [B, H, nq, topk] (ascending)."""
    check_router_args(q, k, proj_q, proj_k, block_q, block_k, topk, layout)
    if kernels_cover(q, block_q, block_k)[0]:
        scores, indices = sla2_kernels.router(
            q, k, proj_q, proj_k, block_q=block_q, block_k=block_k, topk=topk, layout=layout
        )
        return scores.float(), indices.to(torch.int32)
    acc = _acc_dtype(q.dtype)
    scores = ref.router_scores(_bhnd(q, layout).to(acc), _bhnd(k, layout).to(acc), proj_q, proj_k, block_q, block_k)
    sel = ref.hard_topk(scores, topk)
    return scores, sel.indices.to(torch.int32)


@router.register_fake
def _router_fake(q, k, proj_q, proj_k, block_q, block_k, topk, layout):
    check_router_args(q, k, proj_q, proj_k, block_q, block_k, topk, layout)
    b, h, n, _ = _dims(q, layout)
    nq, nk = ref.num_blocks(n, block_q), ref.num_blocks(n, block_k)
    return (q.new_empty(b, h, nq, nk, dtype=_acc_dtype(q.dtype)), q.new_empty(b, h, nq, topk, dtype=torch.int32))


# ------------------------------------------------------------------------------------------------ attention


def _effective_alpha(alpha: torch.Tensor, b: int, h: int, nq: int, all_selected: bool) -> torch.Tensor:
    if all_selected:
        return torch.ones((), dtype=torch.float32, device=alpha.device).expand(b, h, nq)
    return alpha.to(_acc_dtype(alpha.dtype)).expand(b, h, nq)


def _reference_forward(q, k, v, indices, alpha, block_q, block_k, quant, layout):
    """(o in q's dtype and layout, lse fp32) by the reference, in at least float32."""
    b, h, n, _ = _dims(q, layout)
    nq, nk = ref.num_blocks(n, block_q), ref.num_blocks(n, block_k)
    acc = _acc_dtype(q.dtype)
    qr, kr, vr = (_bhnd(t, layout).to(acc) for t in (q, k, v))
    ref.check_dense_fits(qr, kr)
    mask = _mask(indices, nk)
    a = _effective_alpha(alpha, b, h, nq, indices.shape[-1] >= nk).to(acc)
    if quant:
        o_s, lse = ref.fake_quant_sparse_attention(qr, kr, vr, mask, block_q, block_k)
    else:
        o_s, lse = ref.sparse_attention(qr, kr, vr, mask, block_q, block_k)
    o_l = ref.linear_attention_complement(qr, kr, vr, mask, block_q, block_k)
    return ref.alpha_mix(o_s, o_l, a, block_q), lse


def _state_shapes(q: torch.Tensor, block_q: int, layout: str):
    """Shapes of the linear branch's state kept for the backward: H_I (bf16) and Z_I (fp32)."""
    b, h, n, d = _dims(q, layout)
    nq = ref.num_blocks(n, block_q)
    return (b * h, nq, d, d), (b * h, nq, d)


@torch.library.custom_op("sla2::attention", mutates_args=())
def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, alpha: torch.Tensor,
    block_q: int, block_k: int, quant: bool, layout: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SLA2 with a hard block selection: (o in q's layout and dtype, lse [B, H, N] of the sparse branch, fp32 or
    float64 for float64 inputs, then the linear branch's per-query-block state that the backward reuses instead
    of another pass over K and V: H_I [B·H, nq, D, D] (bf16) and Z_I [B·H, nq, D] (fp32). The reference
    implementation (CPU), and the kernels when every key block is selected, return that state as zeros: nothing
    reads it then."""
    check_attention_args(q, k, v, indices, alpha, block_q, block_k, layout)
    shapes = _state_shapes(q, block_q, layout)
    if kernels_cover(q, block_q, block_k)[0]:
        b, h, n, _ = _dims(q, layout)
        nq, nk = ref.num_blocks(n, block_q), ref.num_blocks(n, block_k)
        a = _effective_alpha(alpha, b, h, nq, indices.shape[-1] >= nk)
        o, lse, lin = kernel_autograd.forward_with_state(q, k, v, indices, a, block_q=block_q, block_k=block_k,
                                                         quant=quant, layout=layout)
        if o.stride() != torch.empty_like(q, device="meta").stride():  # the fake promises empty_like(q)
            o = torch.empty_like(q).copy_(o)
        return (o, lse.contiguous(), *(lin if lin is not None else _state_zeros(q, shapes)))
    o, lse = _reference_forward(q, k, v, indices, alpha, block_q, block_k, quant, layout)
    out = torch.empty_like(q)
    out.copy_(o.transpose(1, 2) if layout == "bnhd" else o)
    return (out, lse.to(_acc_dtype(q.dtype)).contiguous(), *_state_zeros(q, shapes))


def _state_zeros(q: torch.Tensor, shapes):
    return q.new_zeros(shapes[0], dtype=torch.bfloat16), q.new_zeros(shapes[1], dtype=torch.float32)


@attention.register_fake
def _attention_fake(q, k, v, indices, alpha, block_q, block_k, quant, layout):
    check_attention_args(q, k, v, indices, alpha, block_q, block_k, layout)
    b, h, n, _ = _dims(q, layout)
    shapes = _state_shapes(q, block_q, layout)
    return (torch.empty_like(q), q.new_empty(b, h, n, dtype=_acc_dtype(q.dtype)),
            q.new_empty(shapes[0], dtype=torch.bfloat16), q.new_empty(shapes[1], dtype=torch.float32))


@torch.library.custom_op("sla2::attention_backward", mutates_args=())
def attention_backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    indices: torch.Tensor, alpha: torch.Tensor, h_i: torch.Tensor, z_i: torch.Tensor,
    block_q: int, block_k: int, quant: bool, layout: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv in their inputs' layout, contiguous; dalpha [B, H, nq] before its reduction to α's shape).
    h_i, z_i: the forward's linear-branch state (read by the kernels only)."""
    if kernel_autograd is not None and kernels_cover(q, block_q, block_k)[0]:
        return kernel_autograd.attention_backward(
            do, q, k, v, o, lse, indices, alpha, block_q=block_q, block_k=block_k, layout=layout,
            lin_state=(h_i, z_i),
        )
    dq, dk, dv, dalpha = reference_backward(do, q, k, v, o, lse, indices, alpha, block_q, block_k, layout)
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), dalpha


@attention_backward.register_fake
def _attention_backward_fake(do, q, k, v, o, lse, indices, alpha, h_i, z_i, block_q, block_k, quant, layout):
    b, h, n, _ = _dims(q, layout)
    nq = ref.num_blocks(n, block_q)
    like = dict(memory_format=torch.contiguous_format)
    return (torch.empty_like(q, **like), torch.empty_like(k, **like), torch.empty_like(v, **like),
            q.new_empty(b, h, nq, dtype=_acc_dtype(q.dtype)))


def _setup_context(ctx, inputs, output):
    q, k, v, indices, alpha, block_q, block_k, quant, layout = inputs
    o, lse, *state = output
    ctx.save_for_backward(q, k, v, o, lse, indices, alpha, *state)
    ctx.cfg = (block_q, block_k, quant, layout)
    ctx.mark_non_differentiable(lse, *state)


def _backward(ctx, do, *_grads_of_auxiliary_outputs):
    q, k, v, o, lse, indices, alpha, *state = ctx.saved_tensors
    block_q, block_k, quant, layout = ctx.cfg
    dq, dk, dv, dalpha = torch.ops.sla2.attention_backward(
        do, q, k, v, o, lse, indices, alpha, *state, block_q, block_k, quant, layout
    )
    da = dalpha.sum_to_size(alpha.shape).to(alpha.dtype) if ctx.needs_input_grad[4] else None
    return dq, dk, dv, None, da, None, None, None, None


attention.register_autograd(_backward, setup_context=_setup_context)


def sla2_attention(q, k, v, indices, alpha, *, block_q: int, block_k: int, quant: bool = False, layout: str = "bnhd"):
    """Differentiable SLA2 through the custom op: returns o (q's layout). alpha: a float or a tensor broadcastable
    to [B, H, nq], taken in at least fp32."""
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.tensor(float(alpha), device=q.device)
    return torch.ops.sla2.attention(q, k, v, indices, alpha_dtype(alpha), block_q, block_k, quant, layout)[0]


def alpha_dtype(alpha: torch.Tensor) -> torch.Tensor:
    """alpha in at least fp32 (float64 stays float64: rounding it would put the reference path, and gradcheck
    in float64, off by fp32's rounding)."""
    return alpha.to(_acc_dtype(alpha.dtype))
