"""The torch.library ops (sla2::router, sla2::attention, sla2::attention_backward) on CPU, where their
implementation is the reference: schema/fake/autograd registration (opcheck), gradients against autograd
through the float64 reference, the module's op path against its reference path, and SoftTop-k router gradients.
"""

import pytest
import torch

from sla2_train.attention import SLA2Attention, backend
from sla2_train.attention import reference as ref


def selection(b, h, n, bq, bk, topk):
    nq, nk = ref.num_blocks(n, bq), ref.num_blocks(n, bk)
    return ref.hard_topk(torch.randn(b, h, nq, nk, dtype=torch.float64), topk)


def qkv(b, h, n, d, layout, requires_grad=False):
    shape = (b, n, h, d) if layout == "bnhd" else (b, h, n, d)
    return [torch.randn(shape, dtype=torch.float64, requires_grad=requires_grad) for _ in range(3)]


def bhnd(t, layout):
    return t.transpose(1, 2) if layout == "bnhd" else t


@pytest.mark.parametrize("layout", ["bnhd", "bhnd"])
@pytest.mark.parametrize("alpha_shape", ["block", "head", "scalar"])
@pytest.mark.parametrize("topk", [2, 6])  # 6 = every key block: α forced to 1, no gradient
def test_op_gradients_equal_reference_autograd(layout, alpha_shape, topk):
    b, h, n, d, bq, bk = 2, 2, 45, 8, 16, 8
    q, k, v = qkv(b, h, n, d, layout, requires_grad=True)
    sel = selection(b, h, n, bq, bk, topk)
    nq = sel.mask.shape[-2]
    shape = {"block": (b, h, nq), "head": (1, h, 1), "scalar": ()}[alpha_shape]
    alpha = (torch.rand(shape, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    dout = torch.randn_like(q)
    o, lse, _ = torch.ops.sla2.attention(q, k, v, sel.indices.int(), alpha, bq, bk, False, layout)
    grads = torch.autograd.grad((o * dout).sum(), (q, k, v, alpha))
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, alpha)]
    a = ref.effective_alpha(leaves[3].expand(b, h, nq), sel.mask.all(dim=-1))
    expect = ref.sla2_attention(*(bhnd(t, layout) for t in leaves[:3]), sel.mask, a, bq, bk)
    expect_lse = ref.sparse_attention(*(bhnd(t, layout) for t in leaves[:3]), sel.mask, bq, bk)[1]
    grads_ref = torch.autograd.grad((bhnd(expect, layout) * dout).sum(), leaves, allow_unused=True)
    torch.testing.assert_close(bhnd(o, layout), expect, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, expect_lse)
    for g, gr in zip(grads, grads_ref):
        torch.testing.assert_close(g, torch.zeros_like(g) if gr is None else gr, rtol=1e-8, atol=1e-10)
    if topk == 6:
        assert grads[3].abs().max() == 0


@pytest.mark.parametrize("alpha_shape", ["block", "head", "scalar"])
def test_op_gradcheck_float64_alpha(alpha_shape):
    """sla2_attention keeps a float64 α in float64: rounding it to fp32 made the α Jacobian wrong in gradcheck."""
    b, h, n, d, bq, bk = 1, 2, 45, 8, 16, 8
    q, k, v = qkv(b, h, n, d, "bnhd")
    idx = selection(b, h, n, bq, bk, 2).indices.int()
    shape = {"block": (b, h, 3), "head": (1, h, 1), "scalar": ()}[alpha_shape]
    alpha = (torch.rand(shape, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    fn = lambda a: backend.sla2_attention(q, k, v, idx, a, block_q=bq, block_k=bk, layout="bnhd")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (alpha,), fast_mode=True)


def test_quant_op_backward_is_straight_through_with_the_forward_output():
    """quant=True: forward value = fake-quant reference; backward = the bf16 formula at the original q, k, v with
    the forward's o and lse (as the kernels do), close to the exact gradient; dα = Σ dO·(O_s^q − O_l) from the
    forward's O_s^q, which in float64 is the reference path's dα (both the derivative of the same forward)."""
    b, h, n, d, bq, bk = 1, 2, 45, 8, 16, 8
    q, k, v = qkv(b, h, n, d, "bhnd", requires_grad=True)
    sel = selection(b, h, n, bq, bk, 3)
    alpha = torch.full((1, h, 1), 0.8, dtype=torch.float64, requires_grad=True)
    dout = torch.randn_like(q)
    o, lse, o_s = torch.ops.sla2.attention(q, k, v, sel.indices.int(), alpha, bq, bk, True, "bhnd")
    fq = ref.sla2_attention(q, k, v, sel.mask, alpha, bq, bk, quant=True)
    torch.testing.assert_close(o, fq.detach())
    torch.testing.assert_close(o_s, ref.fake_quant_sparse_attention(q, k, v, sel.mask, bq, bk)[0].detach())
    grads = torch.autograd.grad((o * dout).sum(), (q, k, v, alpha))
    ste = ref.reference_backward(dout, q.detach(), k.detach(), v.detach(), o.detach(), lse.double(),
                                 sel.indices, alpha.detach(), bq, bk, "bhnd", o_s.detach())
    for g, gs in zip(grads[:3], ste[:3]):
        torch.testing.assert_close(g, gs)
    torch.testing.assert_close(grads[3], ste[3].sum_to_size(alpha.shape))
    exact = torch.autograd.grad((fq * dout).sum(), (q, k, v, alpha))
    for g, ge in zip(grads[:3], exact):
        assert (g - ge).norm() / ge.norm() < 5e-2
    torch.testing.assert_close(grads[3], exact[3], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("quant", [False, True])
def test_opcheck(quant):
    """Schema, fake and autograd registration of the ops, the forward's third output (the sparse branch's output,
    with quant the low-bit O_s^q) and the backward taking it."""
    b, h, n, d, bq, bk = 1, 2, 45, 8, 16, 8
    q, k, v = qkv(b, h, n, d, "bnhd", requires_grad=True)
    sel = selection(b, h, n, bq, bk, 3)
    alpha = torch.full((1, h, 3), 0.7, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.sla2.attention.default, (q, k, v, sel.indices.int(), alpha, bq, bk, quant, "bnhd"))
    eye = torch.eye(d, dtype=torch.float64).expand(h, d, d).contiguous()
    torch.library.opcheck(torch.ops.sla2.router.default, (q.detach(), k.detach(), eye, eye, bq, bk, 3, "bnhd"))
    o, lse, o_s = torch.ops.sla2.attention(q, k, v, sel.indices.int(), alpha, bq, bk, quant, "bnhd")
    assert o_s.shape == q.shape  # sparse_out's default
    args = (torch.randn_like(o), q.detach(), k.detach(), v.detach(), o.detach(), lse, sel.indices.int(),
            alpha.detach(), bq, bk, "bnhd", o_s.detach(), quant)
    torch.library.opcheck(torch.ops.sla2.attention_backward.default, args)


def sparse_out_calls():
    """A dispatch mode recording the sparse_out argument of each sla2::attention call (in .seen)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class SparseOut(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "sla2" and func._opname == "attention":
                self.seen.append(args[9] if len(args) > 9 else True)  # the dispatcher drops a default argument
            return func(*args, **(kwargs or {}))

    return SparseOut()


def test_sparse_output_is_kept_only_where_alpha_gets_a_gradient():
    """The low-bit forward returns its O_s^q (a tensor the size of o, for QAT's dα) only where a gradient can
    reach α: o is the same without it, a backward that needs dα without it is refused, and SLA2Attention asks
    for it in training but not under no_grad or with a frozen α."""
    b, h, n, d, bq, bk = 1, 2, 45, 8, 16, 8
    q, k, v = qkv(b, h, n, d, "bhnd", requires_grad=True)
    idx = selection(b, h, n, bq, bk, 3).indices.int()
    alpha = torch.full((1, h, 1), 0.6, dtype=torch.float64, requires_grad=True)
    o, _, o_s = torch.ops.sla2.attention(q, k, v, idx, alpha, bq, bk, True, "bhnd")
    o_lean, _, o_s_lean = torch.ops.sla2.attention(q, k, v, idx, alpha, bq, bk, True, "bhnd", False)
    assert o_s.shape == q.shape and o_s_lean.numel() == 0
    torch.testing.assert_close(o_lean, o, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="needs its sparse output; call it with sparse_out=True"):
        torch.autograd.grad(o_lean.sum(), alpha)
    o_frozen = torch.ops.sla2.attention(q, k, v, idx, alpha.detach(), bq, bk, True, "bhnd", False)[0]
    torch.autograd.grad(o_frozen.sum(), q)  # q, k, v need no O_s^q

    attn = SLA2Attention(h, d, sparsity=0.5, block_q=bq, block_k=bk, quant=True).double()
    x = [t.detach().transpose(1, 2) for t in (q, k, v)]
    with sparse_out_calls() as calls:
        attn(*x)
        with torch.no_grad():
            attn(*x)
        attn.alpha.requires_grad_(False)
        attn(*x)
    assert calls.seen == [True, False, False]


@pytest.mark.parametrize("keep", [False, True])
def test_bf16_sparse_output_follows_its_tuning_switch(keep, monkeypatch):
    """In bf16, SLA2Attention asks for O_s (the op's sparse_out) exactly where tuning.BF16_SPARSE_OUTPUT is on and a
    backward will run (any gradient: q, k, v or α), never under no_grad; the backward runs either way."""
    from sla2_kernels import tuning

    monkeypatch.setattr(tuning, "BF16_SPARSE_OUTPUT", keep)
    b, h, n, d, bq, bk = 1, 2, 45, 8, 16, 8

    attn = SLA2Attention(h, d, sparsity=0.5, block_q=bq, block_k=bk, quant=False).double()
    q, k, v = qkv(b, h, n, d, "bnhd", requires_grad=True)
    with sparse_out_calls() as calls:
        o = attn(q, k, v)
        with torch.no_grad():
            attn(q, k, v)
        attn.alpha.requires_grad_(False)
        attn(q.detach(), k.detach(), v.detach())  # nothing to differentiate
        attn(q, k, v)  # q, k, v still do
    assert calls.seen == [keep, False, False, keep]
    o.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("alpha_mode", ["per_head", "per_block", "predicted"])
@pytest.mark.parametrize("quant", [False, True])
def test_module_op_path_equals_reference_path(alpha_mode, quant):
    h, d, n = 2, 8, 45
    kw = dict(sparsity=0.5, block_q=16, block_k=8, alpha_mode=alpha_mode, seq_len=n, quant=quant)
    op_path = SLA2Attention(h, d, **kw).double()
    ref_path = SLA2Attention(h, d, backend="reference", **kw).double()
    with torch.no_grad():
        op_path.router.proj_q.add_(torch.randn(h, d, d, dtype=torch.float64) * 0.3)
    ref_path.load_state_dict(op_path.state_dict())
    q, k, v = qkv(2, h, n, d, "bnhd", requires_grad=True)
    dout = torch.randn_like(q)
    outs, grads = [], []
    for m in (op_path, ref_path):
        o = m(q, k, v)
        outs.append(o)
        params = list(m.alpha.parameters())
        grads.append(torch.autograd.grad((o * dout).sum(), [q, k, v, *params]))
        assert m.router.proj_q.grad is None
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    # quant: the op's backward uses the low-bit forward's o and lse, the reference path the exact gradient
    rtol = 5e-2 if quant else 1e-10
    for g0, g1 in zip(*grads):
        assert (g0 - g1).norm() <= rtol * g1.norm() + 1e-12


def test_soft_topk_router_gradients_float32_vs_float64():
    """SoftTop-k (stage 1) is reference-only: every gradient, the router's included, at float32 matches float64."""
    h, d, n = 2, 16, 96
    m64 = SLA2Attention(h, d, sparsity=0.5, block_q=32, block_k=16, topk="soft", alpha_mode="predicted").double()
    with torch.no_grad():
        m64.router.proj_q.add_(torch.randn(h, d, d, dtype=torch.float64) * 0.2)
        m64.router.proj_k.add_(torch.randn(h, d, d, dtype=torch.float64) * 0.2)
    m32 = SLA2Attention(h, d, sparsity=0.5, block_q=32, block_k=16, topk="soft", alpha_mode="predicted")
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    x64 = qkv(1, h, n, d, "bnhd", requires_grad=True)
    x32 = [t.detach().float().requires_grad_() for t in x64]
    dout = torch.randn_like(x64[0])
    res = []
    for m, x in ((m64, x64), (m32, x32)):
        o = m(*x)
        params = [m.router.proj_q, m.router.proj_k, *m.alpha.parameters()]
        res.append(torch.autograd.grad((o * dout.to(o.dtype)).sum(), [*x, *params]))
    for g64, g32 in zip(*res):
        assert g64.abs().sum() > 0
        assert (g32.double() - g64).norm() / g64.norm() < 1e-3


def _op_call(layout="bhnd", dtype=torch.float32, n_k=45, idx=None, alpha=0.5, block_q=16):
    b, h, n, d, bk = 1, 2, 45, 8, 8
    q, k, v = (torch.randn(b, h, n, d).to(dtype) for _ in range(3))
    k = k[:, :, :n_k]
    idx = selection(b, h, n, 16, bk, 2).indices.int() if idx is None else idx
    return lambda: backend.sla2_attention(q, k, v, idx, alpha, block_q=block_q, block_k=bk, layout=layout)


def _router_call(topk=2, proj_shape=(2, 8, 8), layout="bhnd"):
    q, k = torch.randn(1, 2, 45, 8), torch.randn(1, 2, 45, 8)
    w = torch.eye(8).expand(proj_shape).contiguous()
    return lambda: backend.block_router(q, k, w, torch.eye(8).expand(2, 8, 8), block_q=16, block_k=8, topk=topk,
                                        layout=layout)


@pytest.mark.parametrize("call, match", [
    (_op_call(layout="bshd"), "unknown layout 'bshd'"),
    (_op_call(dtype=torch.int64), "q must be a floating-point tensor"),
    (_op_call(n_k=40), "q, k, v shapes differ"),
    (_op_call(idx=torch.zeros(1, 2, 2, 1, dtype=torch.int32)), "indices must be \\[B, H, nq, topk\\]"),
    (_op_call(idx=torch.zeros(1, 2, 3, 1)), "indices must be int32/int64"),
    (_op_call(idx=torch.zeros(1, 2, 3, 7, dtype=torch.int32)), "must be in \\[1, 6\\]"),
    (_op_call(alpha=torch.full((4,), 0.5)), "alpha of shape \\(4,\\) does not broadcast"),
    (_op_call(block_q=0), "block_q must be a positive int"),
    (_router_call(topk=7), "topk must be in \\[1, 6\\]"),
    (_router_call(proj_shape=(8, 8)), "proj_q must be \\[H, D, D\\]"),
    (_router_call(layout="bshd"), "unknown layout 'bshd'"),
    (lambda: SLA2Attention(2, 8, block_q=16, block_k=8)(*torch.randn(3, 1, 0, 2, 8)), "q, k, v are empty"),
    (lambda: SLA2Attention(2, 8, block_q=16, block_k=8)(*torch.randn(3, 0, 45, 2, 8)), "q, k, v are empty"),
])
def test_bad_op_input_raises_one_clear_line(call, match):
    """The ops validate before any work: an unknown layout was read as "bhnd", integer q/k/v or float indices
    ran, and a wrong α or indices shape failed deep inside the reference with an unrelated message."""
    with pytest.raises((ValueError, TypeError), match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_module_op_path_equals_reference_path_bf16():
    """bf16 on CPU: the module's reference path routes in fp32 like the op (and the kernels). It pooled and
    scored in bf16, so near-tied key blocks swapped and ~3% of the query blocks attended to other blocks."""
    torch.manual_seed(0)
    h, d, n = 2, 64, 1000
    kw = dict(sparsity=0.9, block_q=64, block_k=64)
    op_path, ref_path = SLA2Attention(h, d, **kw), SLA2Attention(h, d, backend="reference", **kw)
    ref_path.load_state_dict(op_path.state_dict())
    q, k, v = (torch.randn(1, n, h, d).bfloat16() for _ in range(3))
    k = k + 0.5
    o_op, o_ref = op_path(q, k, v).float(), ref_path(q, k, v).float()
    assert (o_op - o_ref).norm() <= 3e-2 * o_op.norm()  # bf16 rounding of the branches, same blocks


@pytest.mark.parametrize("alpha_value", [0.0, 0.05, 0.5, 1.0])
@pytest.mark.parametrize("alpha_shape", ["block", "head"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_exact_at_every_alpha(alpha_value, alpha_shape, dtype):
    """The op's backward (reference/backward.py on CPU) against autograd through the float64 reference at α = 0,
    0.05, 0.5, 1, ragged N: no term divides by α, so α = 0 is as exact as any other value (float64: to rounding;
    float32 inputs: within 2e-2 relative, as the kernels are held to)."""
    b, h, n, d, bq, bk, topk = 2, 2, 45, 8, 16, 8, 2
    q, k, v = qkv(b, h, n, d, "bnhd")
    sel = selection(b, h, n, bq, bk, topk)
    nq = sel.mask.shape[-2]
    shape = {"block": (b, h, nq), "head": (1, h, 1)}[alpha_shape]
    alpha = torch.full(shape, alpha_value, dtype=torch.float64)
    dout = torch.randn_like(q)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, alpha)]
    a = ref.effective_alpha(leaves[3].expand(b, h, nq), sel.mask.all(dim=-1))
    expect = ref.sla2_attention(*(bhnd(t, "bnhd") for t in leaves[:3]), sel.mask, a, bq, bk)
    want = torch.autograd.grad((bhnd(expect, "bnhd") * dout).sum(), leaves)
    x = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    a_op = alpha.to(torch.promote_types(dtype, torch.float32)).requires_grad_()
    o, _, _ = torch.ops.sla2.attention(*x, sel.indices.int(), a_op, bq, bk, False, "bnhd")
    got = torch.autograd.grad((o * dout.to(dtype)).sum(), (*x, a_op))
    tol = 1e-9 if dtype == torch.float64 else 2e-2
    for name, g, gr in zip(("dq", "dk", "dv", "dalpha"), got, want):
        assert torch.isfinite(g).all(), name
        err = ((g.double() - gr).norm() / gr.norm()).item()
        assert err <= tol, (name, err)
