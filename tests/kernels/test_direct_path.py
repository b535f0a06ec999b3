"""The eager CUDA path without the custom-op dispatcher (sla2_train/attention/direct.py) computes what the ops
compute when their implementation is the kernels: same outputs and same gradients, bit for bit, here under
Triton's interpreter on CPU tensors (kernel_ops: the ops' CPU implementation replaced by the kernels), on ragged
lengths, both layouts, bf16 and low-bit, α per head and per block; and backend.op_path takes it only for an eager
call on CUDA that nothing traces or intercepts (the GPU case at the end).
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sla2_train.attention import SLA2Attention, backend, direct


def _selection(b, h, n, bq, bk, topk, seed):
    g = torch.Generator().manual_seed(seed)
    nq, nk = -(-n // bq), -(-n // bk)
    scores = torch.rand(b, h, nq, nk, generator=g)
    return scores.topk(topk, dim=-1).indices.sort(dim=-1).values.to(torch.int32).contiguous()


def _run(attention, q, k, v, idx, alpha, do, bq, bk, quant, layout):
    """(o, lse, o_s, dq, dk, dv, dα) of one call and its backward."""
    x = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    a = alpha.detach().clone().requires_grad_()
    o, lse, o_s = attention(*x, idx, a, bq, bk, quant, layout, True)
    o.backward(do)
    return (o, lse, o_s, *(t.grad for t in x), a.grad)


@pytest.mark.parametrize("quant", [False, True], ids=["bf16", "lowbit"])
@pytest.mark.parametrize("layout, n, alpha_shape", [("bnhd", 300, "head"), ("bhnd", 131, "block"),
                                                    ("bnhd", 64, "block")])  # 64: every key block selected
def test_direct_attention_equals_the_op_on_the_kernels(quant, layout, n, alpha_shape, kernel_ops, kt):
    b, h, d, bq, bk = 1, 2, 64, 128, 64
    seed = int(torch.randint(0, 2**31, ()))
    q, k, v = kt.make_qkv(b, h, n, d, torch.bfloat16, layout, seed=seed)[0]
    nq, nk = -(-n // bq), -(-n // bk)
    idx = _selection(b, h, n, bq, bk, max(1, nk // 3), seed)
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand((b, h, 1) if alpha_shape == "head" else (b, h, nq), generator=g) * 0.9 + 0.05
    do = torch.randn(q.shape, generator=g).to(q.dtype)
    got = _run(direct.attention, q, k, v, idx, alpha, do, bq, bk, quant, layout)
    want = _run(torch.ops.sla2.attention, q, k, v, idx, alpha, do, bq, bk, quant, layout)
    names = ("o", "lse", "o_s", "dq", "dk", "dv", "dalpha")
    for name, x, y in zip(names, got, want):
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert torch.isfinite(x.float()).all(), name
        assert torch.equal(x, y), (name, float((x.double() - y.double()).abs().max()))
    assert got[2].numel() == q.numel()  # sparse_out=True: the sparse branch's output, in either precision


def test_direct_router_equals_the_op_on_the_kernels(kernel_ops, kt):
    b, h, n, d, bq, bk, topk = 2, 3, 300, 64, 64, 64, 2
    q, k = kt.make_qkv(b, h, n, d, torch.bfloat16, "bnhd", seed=int(torch.randint(0, 2**31, ())))[0][:2]
    pq, pk = (torch.eye(d) + 0.1 * torch.randn(h, d, d) for _ in range(2))
    got = direct.router(q, k, pq, pk, bq, bk, topk, "bnhd")
    want = torch.ops.sla2.router(q, k, pq, pk, bq, bk, topk, "bnhd")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("quant", [False, True], ids=["bf16", "lowbit"])
def test_module_through_the_direct_path_equals_the_op_path(quant, kernel_ops, monkeypatch):
    """SLA2Attention (router, α per block from the selected mass, attention) takes the same values either way, and
    its gradients reach q, k, v and α alike."""
    h, d, n = 2, 64, 330
    attn = SLA2Attention(h, d, sparsity=0.6, block_q=64, block_k=64, alpha_mode="predicted", quant=quant)
    with torch.no_grad():
        attn.router.proj_q.add_(0.2 * torch.randn(h, d, d))
    q, k, v = (torch.randn(1, n, h, d).bfloat16() for _ in range(3))
    do = torch.randn(1, n, h, d).bfloat16()

    def run(path):
        monkeypatch.setattr(backend, "op_path", lambda q: path)
        attn.zero_grad()
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        o = attn(*x)
        o.backward(do)
        return o, [t.grad for t in x], [p.grad.clone() for p in attn.alpha_parameters() if p.grad is not None]

    o1, g1, a1 = run((direct.router, direct.attention))
    o2, g2, a2 = run((torch.ops.sla2.router, torch.ops.sla2.attention))
    assert torch.equal(o1, o2)
    assert all(torch.equal(x, y) for x, y in zip(g1, g2))
    assert len(a1) == len(a2) > 0 and all(torch.equal(x, y) for x, y in zip(a1, a2))


class _Seen(TorchDispatchMode):
    """The sla2 ops dispatched while active."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "sla2":
            self.ops.append(func._opname)
        return func(*args, **(kwargs or {}))


def test_a_call_is_observed_under_a_dispatch_mode_a_subclass_or_torch_compile():
    """backend.unobserved, op_path's condition beside the device: a plain tensor in eager mode is unobserved; a
    dispatch mode (as selective checkpointing uses), a tensor subclass (as fake tensors are) or torch.compile's
    tracing each make the call observed, and then the ops run, where a mode or a tracer sees them."""
    q = torch.zeros(1, 4, 1, 8)
    assert backend.unobserved(q)
    assert backend.op_path(q) == (torch.ops.sla2.router, torch.ops.sla2.attention)  # off CUDA: the ops
    with _Seen():
        assert not backend.unobserved(q)
    assert not backend.unobserved(torch.nn.Parameter(q))
    traced = torch.compile(lambda x: x + 1 if backend.unobserved(x) else x - 1, backend="eager")
    assert float(traced(q).sum()) == -q.numel()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_op_path_on_cuda_is_direct_only_when_eager_and_unobserved():
    h, d, n = 2, 64, 700
    attn = SLA2Attention(h, d, sparsity=0.8).cuda()
    x = [torch.randn(1, n, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    assert backend.op_path(x[0]) == (direct.router, direct.attention)
    o = attn(*x)
    with _Seen() as seen:  # selective activation checkpointing acts through such a mode: it must see the ops
        o_seen = attn(*x)
    assert seen.ops == ["router", "attention"]
    torch.testing.assert_close(o, o_seen, rtol=0, atol=0)
    compiled = torch.compile(attn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*x), o, rtol=0, atol=0)
