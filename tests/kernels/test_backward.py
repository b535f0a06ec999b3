"""SLA2 backward kernels (sla2_kernels.backward, through the custom op sla2::attention) against autograd through the
float64 reference.

On CPU the kernels run under Triton's interpreter (tests/kernels/conftest.py sets TRITON_INTERPRET=1), so the
shapes are small: ragged N, b_q/b_k 64 and 128, head_dim 64 and 128, both layouts, bf16 and fp16, every key
block selected, QAT. Inputs are fresh random tensors per test; every float buffer the backward allocates is
poisoned with NaN, so an element it fails to write shows up. Relative error ‖kernel − ref‖ / ‖ref‖ ≤ 2e-2.
"""

from dataclasses import replace

import pytest
import torch

import sla2_kernels
from sla2_kernels import backward, launch, layouts, selection
from sla2_kernels.tuning import LONG_LIST_FACTOR
from sla2_train.attention import backend
from sla2_train.attention import reference as ref

TOL = 2e-2


def rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values (unwritten or broken output)"
    return ((a - b).norm() / b.norm()).item()


# dα_I = Σ_{i∈I} (Ds_i − Dl_i) (Ds = dO·O_s, Dl = dO·O_l) sums terms of either sign over a block's rows: on random
# inputs the terms' total is ~10× the result (b1h1n200, 25 draws), and the kernels' Dl (bf16 φQ and the centred
# bf16 state on the tensor cores; Ds is exact) moves each term by ~1e-4 of its size: dα is within TOL on almost
# every draw (max 1% over those 25), but a block whose sum nearly cancels would fail a plain relative bound by
# chance. So dα passes at TOL relative, or per block within TOL·|dα| plus 2⁻¹² of the terms' size;
# test_dalpha_well_conditioned checks dα strictly where nothing cancels.
DALPHA_CANCEL = 2.0 ** -12


def block_sums(t, bq):
    """[B, H, N] -> float64 sums over each query block's rows [B, H, nq] (the last block ragged)."""
    b, h, n = t.shape
    nq = -(-n // bq)
    return torch.nn.functional.pad(t.double(), (0, nq * bq - n)).view(b, h, nq, bq).sum(-1)


def dalpha_scale(do, o, bq):
    """Per query block Σ_i Σ_d |dO_i,d · O_i,d| ([B, H, nq], float64), the size of dα's terms; do, o as
    [B, H, N, D]."""
    return block_sums((do.double() * o.double()).abs().sum(-1), bq)


def assert_dalpha(got, want, tol, scale):
    """dα within tol (relative L2), or per block within tol·|dα| plus DALPHA_CANCEL of its terms' size `scale`
    ([B, H, nq]; see above)."""
    assert got.shape == want.shape, "dalpha"
    err = rel(got, want)
    if err > tol:
        bound = tol * want.double().abs() + DALPHA_CANCEL * scale.sum_to_size(want.shape)
        assert bool(((got.double() - want.double()).abs() <= bound).all()), ("dalpha", err, (got - want).abs().max())


def assert_grads(got, want, tol, *, do, o, bq):
    """dq, dk, dv within tol (relative L2); dα likewise or within the cancellation-aware bound above."""
    for name, gk, gr in zip(("dq", "dk", "dv"), got, want):
        assert gk.shape == gr.shape, name
        assert rel(gk, gr) <= tol, (name, rel(gk, gr))
    assert_dalpha(got[3], want[3], tol, dalpha_scale(do, o, bq))


@pytest.fixture
def poison(monkeypatch):
    """The kernels' buffers (launch.empty / empty_like) come back NaN-filled (int32: a huge negative).
    Patched in sla2_kernels.launch, not in torch: a patched torch.empty_like once stayed in dynamo's trace rules
    and broke a later torch.compile test."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-(2**30) if t.dtype == torch.int32 else 0)

    monkeypatch.setattr(launch, "empty", lambda *a, **k: nan_fill(empty(*a, **k)))
    monkeypatch.setattr(launch, "empty_like", lambda *a, **k: nan_fill(empty_like(*a, **k)))


def to_layout(t, layout):
    return t.transpose(1, 2).contiguous() if layout == "bnhd" else t.contiguous()


def from_layout(t, layout):
    return t.transpose(1, 2) if layout == "bnhd" else t


def problem(b, h, n, d, bq, bk, topk, dtype, alpha_shape="block", scores=None):
    """Random q, k, v, dO (already rounded to dtype, as float64), a selection (the top-k of `scores` [B, H, nq, nk],
    random by default) and a random α."""
    q, k, v, do = (torch.randn(b, h, n, d, dtype=torch.float64).to(dtype).double() for _ in range(4))
    nq, nk = -(-n // bq), -(-n // bk)
    sel = ref.hard_topk(torch.randn(b, h, nq, nk) if scores is None else scores, topk)
    shape = {"block": (b, h, nq), "head": (1, h, 1), "scalar": ()}[alpha_shape]
    alpha = torch.rand(shape, dtype=torch.float64) * 0.8 + 0.1
    return q, k, v, do, sel, alpha


def reference_grads(q, k, v, do, sel, alpha, bq, bk, quant=False):
    leaves = [t.clone().requires_grad_() for t in (q, k, v, alpha)]
    nq, nk = sel.mask.shape[-2:]
    a = ref.effective_alpha(leaves[3].expand(q.shape[0], q.shape[1], nq), sel.mask.all(dim=-1))
    out = ref.sla2_attention(*leaves[:3], sel.mask, a, bq, bk, quant=quant)
    out.backward(do)
    return out.detach(), [t.grad for t in leaves]


def kernel_grads(q, k, v, do, sel, alpha, bq, bk, layout, dtype, quant=False):
    qk, kk, vk, dok = (to_layout(t.to(dtype), layout) for t in (q, k, v, do))
    leaves = [t.requires_grad_() for t in (qk, kk, vk)]
    a = alpha.float().requires_grad_()
    o = backend.sla2_attention(*leaves, sel.indices.to(torch.int32), a, block_q=bq, block_k=bk, quant=quant,
                               layout=layout)
    o.backward(dok)
    return from_layout(o.detach(), layout), [from_layout(t.grad, layout) for t in leaves] + [a.grad]


def forward_problem(b, h, n, d, bq, bk, topk, layout="bhnd", scores=None):
    """A bf16 problem with its float64 reference gradients and the kernels' forward o, lse; .backward(dO, config)
    runs the kernels' backward on it, the kernels' tensors in `layout` and dq, dk, dv returned as [B, H, N, D]."""
    from types import SimpleNamespace

    q, k, v, do, sel, alpha = problem(b, h, n, d, bq, bk, topk, torch.bfloat16, scores=scores)
    _, g_ref = reference_grads(q, k, v, do, sel, alpha, bq, bk)
    swap = (lambda t: t.transpose(1, 2).contiguous()) if layout == "bnhd" else (lambda t: t)
    qk, kk, vk, dok = (swap(t.bfloat16()) for t in (q, k, v, do))
    idx = sel.indices.to(torch.int32)
    o, lse, _ = sla2_kernels.sla2_forward(qk, kk, vk, idx, alpha.float(), block_q=bq, block_k=bk, quant=False,
                                          layout=layout)

    def run(grad_out, cfg):
        dq, dk, dv, da = sla2_kernels.sla2_backward(grad_out, qk, kk, vk, o, lse, idx, alpha.float(), block_q=bq,
                                                    block_k=bk, layout=layout, config=cfg)
        return swap(dq), swap(dk), swap(dv), da

    return SimpleNamespace(do=do, dok=dok, alpha=alpha, g_ref=g_ref, o=swap(o), bq=bq, backward=run)


CASES = [
    # b, h, n, d, bq, bk, topk, layout, dtype, alpha shape
    (2, 2, 333, 64, 128, 64, 3, "bnhd", torch.bfloat16, "block"),  # ragged
    (1, 2, 300, 128, 64, 128, 1, "bhnd", torch.bfloat16, "head"),
    (1, 2, 257, 64, 64, 64, 3, "bhnd", torch.float16, "scalar"),
    (1, 1, 200, 128, 128, 64, 2, "bnhd", torch.bfloat16, "block"),
]


def use_kernel_family(monkeypatch, tma: bool):
    """The backward's default configuration with its dq and dk/dv kernels of the TMA or the pointer family."""
    default = backward.default_bwd_config

    def config(*a):
        c = replace(default(*a), dq_tma=tma)
        return replace(c, dkdv_tma=True) if tma else c.pointer_dkdv()

    monkeypatch.setattr(backward, "default_bwd_config", config)


@pytest.fixture(params=["pointer", "tma"])
def bwd_path(request, monkeypatch):
    """The backward's default configuration with the dq and dk/dv kernels of the pointer or the TMA family."""
    use_kernel_family(monkeypatch, request.param == "tma")
    return request.param


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}h{c[1]}n{c[2]}d{c[3]}q{c[4]}k{c[5]}t{c[6]}-{c[7]}-{c[8]}".replace("torch.", ""))
def test_gradients_match_float64_reference(case, poison, bwd_path, kernel_ops):
    b, h, n, d, bq, bk, topk, layout, dtype, ash = case
    q, k, v, do, sel, alpha = problem(b, h, n, d, bq, bk, topk, dtype, ash)
    o_ref, g_ref = reference_grads(q, k, v, do, sel, alpha, bq, bk)
    o, g = kernel_grads(q, k, v, do, sel, alpha, bq, bk, layout, dtype)
    assert rel(o, o_ref) <= 1e-2
    assert_grads(g, g_ref, TOL, do=do, o=o_ref, bq=bq)


ALPHA_CASES = [  # α value, α's shape, kernel family, layout
    (0.0, "head", "tma", "bnhd"), (0.0, "block", "pointer", "bhnd"),
    (0.05, "head", "pointer", "bnhd"), (0.05, "block", "tma", "bhnd"),
    (0.5, "head", "tma", "bhnd"), (0.5, "block", "pointer", "bnhd"),
    (1.0, "head", "pointer", "bhnd"), (1.0, "block", "tma", "bnhd"),
]


@pytest.mark.parametrize("value,alpha_shape,family,layout", ALPHA_CASES, ids=lambda x: str(x))
def test_gradients_at_every_alpha(value, alpha_shape, family, layout, poison, kernel_ops, monkeypatch):
    """dq, dk, dv and dα through the op at α = 0, 0.05, 0.5 and 1 (per head and per query block, ragged N, both
    kernel families) within TOL of autograd through the float64 reference: no term divides by α, and Δ = α Ds
    comes from Ds = rowsum(P ⊙ dO Vᵀ), not from the bf16 O."""
    use_kernel_family(monkeypatch, family == "tma")
    b, h, n, d, bq, bk, topk = 1, 2, 200, 64, 64, 64, 2
    q, k, v, do, sel, _ = problem(b, h, n, d, bq, bk, topk, torch.bfloat16)
    shape = {"block": (b, h, -(-n // bq)), "head": (1, h, 1)}[alpha_shape]
    alpha = torch.full(shape, value, dtype=torch.float64)
    o_ref, g_ref = reference_grads(q, k, v, do, sel, alpha, bq, bk)
    o, g = kernel_grads(q, k, v, do, sel, alpha, bq, bk, layout, torch.bfloat16)
    assert rel(o, o_ref) <= 1e-2
    assert_grads(g, g_ref, TOL, do=do, o=o_ref, bq=bq)


SPARSE_OUTPUT_CASES = [  # α value, kernel family, layout, ragged N
    (0.0, "tma", "bhnd", 333), (0.05, "pointer", "bnhd", 200), (0.5, "tma", "bnhd", 257), (1.0, "pointer", "bhnd", 333),
]


@pytest.mark.parametrize("value,family,layout,n", SPARSE_OUTPUT_CASES, ids=lambda x: str(x))
def test_bf16_sparse_output_gives_the_dq_loop_its_delta(value, family, layout, n, poison, kernel_ops, monkeypatch):
    """With tuning.BF16_SPARSE_OUTPUT the bf16 op keeps O_s and the dq kernel takes Δ = α dO·O_s before its loop
    (DELTA_KNOWN: no P K product): the backward really runs that way, its gradients stay within TOL of autograd
    through the float64 reference at α = 0, 0.05, 0.5, 1, and only dq moves from the backward without O_s (by
    O_s's bf16 rounding in Δ; Ds for dα is still the loop's exact sum, so dk, dv, dα are bit for bit the same)."""
    from sla2_kernels import tuning

    use_kernel_family(monkeypatch, family == "tma")
    seen = []
    run_dq_sparse = backward.run_dq_sparse
    monkeypatch.setattr(backward, "run_dq_sparse", lambda p: (seen.append(p.delta_known), run_dq_sparse(p))[1])
    b, h, d, bq, bk, topk = 1, 2, 64, 128, 64, 3
    q, k, v, do, sel, _ = problem(b, h, n, d, bq, bk, topk, torch.bfloat16)
    alpha = torch.full((1, h, 1), value, dtype=torch.float64)
    o_ref, g_ref = reference_grads(q, k, v, do, sel, alpha, bq, bk)
    grads = {}
    for keep in (True, False):
        monkeypatch.setattr(tuning, "BF16_SPARSE_OUTPUT", keep)
        o, grads[keep] = kernel_grads(q, k, v, do, sel, alpha, bq, bk, layout, torch.bfloat16)
        assert seen.pop() is keep
        assert rel(o, o_ref) <= 1e-2
        assert_grads(grads[keep], g_ref, TOL, do=do, o=o_ref, bq=bq)
    for g1, g2 in zip(grads[True][1:], grads[False][1:]):
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    assert rel(grads[True][0], grads[False][0]) <= 1e-2


@pytest.mark.parametrize("tma", [False, True], ids=["pointer", "tma"])
def test_dq_kernel_row_statistics(tma, poison):
    """The dq kernel's row statistics, what the dk/dv step reads instead of lse, α and Δ: per query row
    lse·log2(e) − log2(α) (+inf at α = 0, so α·P = 0 with no division) and Ds = dO·O_s, written up to n_q·b_q
    so that the step's unmasked loads never meet an unwritten (here NaN-poisoned) value past N."""
    b, h, n, d, bq, bk, topk = 1, 2, 200, 64, 64, 64, 2
    q, k, v, do, sel, _ = problem(b, h, n, d, bq, bk, topk, torch.bfloat16)
    nq = -(-n // bq)
    alpha = torch.tensor([[0.0, 0.3, 0.7, 1.0], [0.05, 0.5, 0.0, 0.9]]).view(1, h, nq)
    qk, kk, vk, dok = (t.bfloat16() for t in (q, k, v, do))
    idx = sel.indices.to(torch.int32)
    kw = dict(block_q=bq, block_k=bk, layout="bhnd")
    o, lse, o_s = sla2_kernels.sla2_forward(qk, kk, vk, idx, alpha, quant=False, sparse_out=True, **kw)
    h_i, z_i, keep = backward.backward_linear_state(kk, vk, idx, **kw)
    cfg = replace(backward.default_bwd_config(bq, bk, d), dq_tma=tma)
    p = backward.prepare(dok, qk, kk, vk, o, lse, idx, alpha, h_i=h_i, z_i=z_i, keep=keep, config=cfg, **kw)
    backward.run_dq_sparse(p)
    rows = p.rows.view(b, h, 2, nq * bq)
    a_row = alpha.repeat_interleave(bq, dim=-1)[..., :n]
    want = lse.double() / torch.log(torch.tensor(2.0, dtype=torch.float64)) - torch.log2(a_row.double())
    got = rows[:, :, 0, :n].double()
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and bool((got[torch.isinf(got)] > 0).all())
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-6, atol=1e-5)
    d_s = (dok.double() * o_s.double()).sum(-1)
    assert rel(rows[:, :, 1, :n], d_s) <= 1e-2  # O_s rounded to bf16 against the loop's exact sum
    assert not torch.isnan(rows).any()


def test_blocked_oracle_float64_gradients_equal_reference():
    """The GPU tests' float64 oracle at the Wan shape (autograd through blocked_reference in float64) has the
    gradients of the dense float64 reference, α = 0 included."""
    from sla2_kernels import blocked_reference as br

    b, h, n, d, bq, bk, topk = 1, 2, 333, 32, 128, 64, 2
    q, k, v, do, sel, _ = problem(b, h, n, d, bq, bk, topk, torch.float64)
    alpha = torch.tensor([0.0, 0.05, 0.7], dtype=torch.float64).expand(b, h, 3).contiguous()
    _, g_ref = reference_grads(q, k, v, do, sel, alpha, bq, bk)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, alpha)]
    br.sla2_forward(*leaves[:3], sel.indices, leaves[3], bq, bk)[0].backward(do)
    for t, gr in zip(leaves, g_ref):
        torch.testing.assert_close(t.grad, gr, rtol=1e-9, atol=1e-11)


def test_dalpha_well_conditioned(poison, kernel_ops):
    """dO along O_s − O_l makes dα_I = Σ_i dO_i·(O_s,i − O_l,i) a sum of positive terms (no cancellation):
    there the kernels' dα must match the float64 reference at TOL with no allowance."""
    b, h, n, d, bq, bk, topk = 1, 2, 300, 64, 128, 64, 2
    q, k, v, _, sel, alpha = problem(b, h, n, d, bq, bk, topk, torch.bfloat16)
    o_s, _ = ref.sparse_attention(q, k, v, sel.mask, bq, bk)
    o_l = ref.linear_attention_complement(q, k, v, sel.mask, bq, bk)
    do = ((o_s - o_l) * 30.0 + 0.1 * torch.randn_like(o_s)).bfloat16().double()
    _, g_ref = reference_grads(q, k, v, do, sel, alpha, bq, bk)
    _, g = kernel_grads(q, k, v, do, sel, alpha, bq, bk, "bhnd", torch.bfloat16)
    assert bool((g_ref[3] > 0).all())
    assert rel(g[3], g_ref[3]) <= TOL, rel(g[3], g_ref[3])


def test_every_block_selected_alpha_is_one_and_gets_no_gradient(poison, kernel_ops):
    b, h, n, d, bq, bk = 1, 2, 300, 64, 128, 128
    q, k, v, do, sel, alpha = problem(b, h, n, d, bq, bk, 3, torch.bfloat16)
    o_ref, g_ref = reference_grads(q, k, v, do, sel, alpha, bq, bk)
    o, g = kernel_grads(q, k, v, do, sel, alpha, bq, bk, "bnhd", torch.bfloat16)
    assert rel(o, o_ref) <= 1e-2
    for gk, gr in zip(g[:3], g_ref[:3]):
        assert rel(gk, gr) <= TOL
    assert torch.equal(g[3], torch.zeros_like(g[3]))


def test_qat_backward_is_the_bf16_backward_at_the_original_inputs(poison, kernel_ops):
    """quant=True: low-bit forward; the backward is the bf16 kernel at the original q, k, v with the forward's
    o and lse, dα from its O_s^q (docs/method.md, Low-bit sparse branch and QAT). So (1) it equals the backward
    given that o, lse and O_s^q exactly; (2) it matches the float64 straight-through formula at that o, lse,
    O_s^q; (3) it stays close to the exact gradient (the reference's straight_through), the gap being the low-bit
    forward's error in o and lse."""
    b, h, n, d, bq, bk, topk, layout = 1, 2, 333, 64, 128, 64, 2, "bnhd"
    q, k, v, do, sel, alpha = problem(b, h, n, d, bq, bk, topk, torch.bfloat16)
    qk, kk, vk, dok = (to_layout(t.bfloat16(), layout) for t in (q, k, v, do))
    idx = sel.indices.to(torch.int32)
    a3 = alpha.float()
    kw = dict(block_q=bq, block_k=bk, layout=layout)
    o_q, lse_q, os_q = sla2_kernels.sla2_forward(qk, kk, vk, idx, a3, quant=True, **kw)
    o_b = sla2_kernels.sla2_forward(qk, kk, vk, idx, a3, quant=False, **kw)[0]
    assert rel(o_q, o_b) > 1e-4  # the forward really is low-bit
    o_a, g_auto = kernel_grads(q, k, v, do, sel, alpha, bq, bk, layout, torch.bfloat16, quant=True)
    torch.testing.assert_close(to_layout(o_a, layout), o_q, rtol=0, atol=0)
    g_qat = sla2_kernels.sla2_backward(dok, qk, kk, vk, o_q, lse_q, idx, a3, o_s=os_q, quant=True, **kw)
    # (1) the op's autograd formula is exactly this call
    for g1, g2 in zip(g_auto, (*(from_layout(g, layout) for g in g_qat[:3]), g_qat[3].sum_to_size(a3.shape))):
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    # (2) float64 straight-through formula at the low-bit o, lse and O_s^q
    f64 = [t.double() for t in (dok, qk, kk, vk, o_q)]
    g_ste = ref.reference_backward(*f64, lse_q.double(), idx, alpha, bq, bk, layout, os_q.double())
    assert_grads(g_qat, g_ste, TOL, do=do, o=from_layout(o_q, layout), bq=bq)
    # (3) exact gradient of the reference's straight_through
    _, g_ref = reference_grads(q, k, v, do, sel, alpha, bq, bk, quant=True)
    for name, gk, gr in zip(("dq", "dk", "dv"), g_auto[:3], g_ref[:3]):
        assert rel(gk, gr) <= 5e-2, (name, rel(gk, gr))


def qat_op(q, k, v, sel, alpha, bq, bk, layout):
    """The low-bit forward through the op sla2::attention (bf16, `layout`): (o in `layout`, O_s^q as
    [B, H, N, D], and dalpha(dO), α's gradient through the op's autograd for a float64 dO [B, H, N, D])."""
    x = [to_layout(t.bfloat16(), layout) for t in (q, k, v)]
    a = alpha.float().requires_grad_()
    o, _, o_s = torch.ops.sla2.attention(*x, sel.indices.int(), a, bq, bk, True, layout)
    grad = lambda do: torch.autograd.grad(o, a, to_layout(do.bfloat16(), layout))[0]  # noqa: E731
    return o, from_layout(o_s, layout), grad


def lowbit_dalpha(do, o_s, o_l, bq):
    """Float64 dα of the low-bit forward per query block [B, H, nq]: Σ_{i∈I} dO_i·(O_s^q_i − O_l,i)."""
    return block_sums((do.double() * (o_s.double() - o_l.double())).sum(-1), bq)


@pytest.mark.parametrize("impl", ["kernels", "reference"])
@pytest.mark.parametrize("alpha_shape", ["head", "block"])
@pytest.mark.parametrize("value", [0.0, 0.05, 0.5, 1.0])
def test_qat_dalpha_is_the_derivative_of_the_lowbit_forward(value, alpha_shape, impl, poison, request):
    """quant=True through the op (the Triton kernels under the interpreter, or the CPU reference behind it):
    α multiplies the low-bit O_s^q in the forward, so dα must be Σ dO·(O_s^q − O_l) with the forward's own
    O_s^q, within TOL of float64 at α = 0, 0.05, 0.5, 1, per head and per block. Taken from the bf16 P instead,
    the low-bit error of O_s (~3%) shows up magnified in this difference of similar terms."""
    if impl == "kernels":
        request.getfixturevalue("kernel_ops")
    b, h, n, d, bq, bk, topk, layout = 1, 2, 200, 64, 64, 64, 2, ("bnhd" if alpha_shape == "head" else "bhnd")
    q, k, v, do, sel, _ = problem(b, h, n, d, bq, bk, topk, torch.bfloat16)
    alpha = torch.full({"block": (b, h, -(-n // bq)), "head": (1, h, 1)}[alpha_shape], value)
    o, o_s, dalpha = qat_op(q, k, v, sel, alpha, bq, bk, layout)
    o_l = ref.linear_attention_complement(q, k, v, sel.mask, bq, bk)
    want = lowbit_dalpha(do, o_s, o_l, bq)
    assert_dalpha(dalpha(do), want.sum_to_size(alpha.shape), TOL, dalpha_scale(do, from_layout(o, layout), bq))


@pytest.mark.parametrize("impl", ["kernels", "reference"])
def test_qat_dalpha_well_conditioned(impl, poison, request):
    """dO along O_s^q − O_l makes every term of QAT's dα positive: the op's dα must match the float64
    Σ dO·(O_s^q − O_l) at TOL with no allowance."""
    if impl == "kernels":
        request.getfixturevalue("kernel_ops")
    b, h, n, d, bq, bk, topk = 1, 2, 300, 64, 128, 64, 2
    q, k, v, _, sel, alpha = problem(b, h, n, d, bq, bk, topk, torch.bfloat16)
    _, o_s, dalpha = qat_op(q, k, v, sel, alpha, bq, bk, "bhnd")
    o_l = ref.linear_attention_complement(q, k, v, sel.mask, bq, bk)
    do = ((o_s.double() - o_l) * 30.0 + 0.1 * torch.randn_like(o_l)).bfloat16().double()
    want = lowbit_dalpha(do, o_s, o_l, bq)
    assert bool((want > 0).all())
    got = dalpha(do)
    assert rel(got, want) <= TOL, rel(got, want)


def test_strided_inputs_and_gradient(poison):
    """q, k, v as views of one packed [B, N, 3, H, D] projection and a non-contiguous dO: no copies needed."""
    b, h, n, d, bq, bk, topk = 1, 2, 200, 64, 64, 64, 2
    packed = torch.randn(b, n, 3, h, d).bfloat16()
    q, k, v = packed.unbind(2)  # [B, N, H, D] with token stride 3·H·D
    do_big = torch.randn(b, n, h, 2 * d).bfloat16()
    do = do_big[..., :d]
    nq, nk = -(-n // bq), -(-n // bk)
    sel = ref.hard_topk(torch.randn(b, h, nq, nk), topk)
    alpha = torch.rand(1, h, nq) * 0.8 + 0.1
    o, lse, _ = sla2_kernels.sla2_forward(q, k, v, sel.indices.int(), alpha, block_q=bq, block_k=bk, quant=False,
                                          layout="bnhd")
    dq, dk, dv, da = sla2_kernels.sla2_backward(do, q, k, v, o, lse, sel.indices.int(), alpha, block_q=bq,
                                                block_k=bk, layout="bnhd")
    c = [t.contiguous() for t in (do, q, k, v)]
    dq2, dk2, dv2, da2 = sla2_kernels.sla2_backward(c[0], c[1], c[2], c[3], o, lse, sel.indices.int(), alpha,
                                                    block_q=bq, block_k=bk, layout="bnhd")
    for g1, g2 in ((dq, dq2), (dk, dk2), (dv, dv2), (da, da2)):
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    _, g_ref = reference_grads(*(from_layout(t.double(), "bnhd") for t in (q, k, v, do)), sel, alpha.double(), bq, bk)
    for gk, gr in zip((dq, dk, dv), g_ref[:3]):
        assert rel(from_layout(gk, "bnhd"), gr) <= TOL


@pytest.mark.parametrize("qs,rows,tma", [(0, 0, False), (32, 64, False), (64, 0, False), (32, 64, True),
                                         (64, 0, True)])
def test_tile_widths(qs, rows, tma, poison):
    """Tile shapes of the two kernels: dq programs take `rows` query rows (64: a query block split over two
    programs), dk/dv walks qs query rows at a time; both kernel families."""
    x = forward_problem(1, 2, 333, 64, 128, 64, 3)
    cfg = sla2_kernels.BwdConfig(8, 2, 8, 2, qs=qs, dq_rows=rows, dq_tma=tma, dkdv_tma=tma)
    assert_grads(x.backward(x.dok, cfg), x.g_ref, TOL, do=x.do, o=x.o, bq=x.bq)


def test_the_gluon_dq_option_falls_back_where_gluon_cannot_run(poison, monkeypatch):
    """BwdConfig.dq_gluon, with either of its loops (dq_gluon_overlap), under the interpreter (no Gluon there): the
    Triton kernel runs and the gradients are those of the configuration without it; on a GPU the suitability rule
    refuses what the Gluon kernel is not built for (32-bit tiles, b_k 128, head_dim 96, b_q 32, a GPU other than
    Hopper), each alone. The overlapped loop needs the Gluon kernel, and BwdConfig.flipped keeps the pair valid."""
    x = forward_problem(1, 2, 333, 64, 128, 64, 3)
    cfg = sla2_kernels.BwdConfig(4, 2, 4, 2, dq_rows=64, dq_tma=True, dkdv_tma=True)
    want = x.backward(x.dok, cfg)
    ran, run = [], backward.launch.run
    monkeypatch.setattr(backward.launch, "run", lambda name, kernel, *a, **kw: (ran.append(kernel.__name__),
                                                                                 run(name, kernel, *a, **kw))[1])
    for gluon in (replace(cfg, dq_gluon=True), replace(cfg, dq_gluon=True, dq_gluon_overlap=True)):
        ran.clear()
        got = x.backward(x.dok, gluon)
        assert "sla2_bwd_dq_tma_kernel" in ran and "sla2_bwd_dq_gluon_kernel" not in ran
        for g1, g2 in zip(got, want):
            torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    with pytest.raises(ValueError, match="dq_gluon_overlap"):
        replace(cfg, dq_gluon_overlap=True)
    both = replace(cfg, dq_gluon=True, dq_gluon_overlap=True)
    assert cfg.flipped("dq_gluon_overlap") == both and both.flipped("dq_gluon") == cfg
    assert both.flipped("dq_gluon_overlap") == replace(cfg, dq_gluon=True)
    registers = replace(cfg, dkdv_register_kv=True)  # the TMA dk/dv kernel's option follows that kernel
    pointer = registers.flipped("dkdv_tma")
    assert pointer == replace(cfg, dkdv_tma=False) and pointer.flipped("dkdv_register_kv") == registers

    if not backward.dq_gluon.AVAILABLE:
        return
    monkeypatch.setattr(backward.launch, "interpreting", lambda: False)
    monkeypatch.setattr(backward.gluon_tiles, "hopper", lambda device: True)
    on = replace(cfg, dq_gluon=True)

    def suits(n=300, d=64, bq=128, bk=64, dtype=torch.bfloat16, c=on):
        q = torch.zeros(1, 2, n, d, dtype=dtype)
        idx = torch.zeros(1, 2, -(-n // bq), 1, dtype=torch.int32)
        p = backward.prepare(q, q, q, q, q, torch.zeros(1, 2, n), idx, torch.ones(1, 2, 1), block_q=bq, block_k=bk,
                             layout="bhnd", h_i=None, z_i=None, config=c)
        return backward.gluon_dq_suits(p, [q] * 6)

    assert suits() and suits(d=128, bq=64, dtype=torch.float16)
    assert not suits(c=cfg)
    assert not suits(dtype=torch.float32)
    assert not suits(bk=128)
    assert not suits(d=96)
    assert not suits(bq=32)

    monkeypatch.setattr(backward.gluon_tiles, "hopper", lambda device: False)  # a GPU after Hopper: no wgmma
    assert not suits()


@pytest.mark.parametrize("tma", [False, True])
def test_long_key_block_lists(tma, poison):
    """Key blocks selected by most query blocks (CSR lists of up to 20 query blocks; the other CPU tests
    have a few), ragged N: the sparse walk over the list and dz_j = dZ_tot − Σ over the list stay exact."""
    x = forward_problem(1, 1, 1250, 64, 64, 64, 18)  # one head: the lists, not the heads, are what this checks
    cfg = sla2_kernels.BwdConfig(4, 2, 4, 2, dq_tma=tma, dkdv_tma=tma)
    assert_grads(x.backward(x.dok, cfg), x.g_ref, TOL, do=x.do, o=x.o, bq=x.bq)


def sink_scores(b, h, nq, nk, sinks):
    """Random router scores [B, H, nq, nk] in which key block j of (batch, head) is every query block's first
    choice, for each (batch, head, j) in sinks: lists as long as nq there."""
    scores = torch.randn(b, h, nq, nk)
    for bi, hi, j in sinks:
        scores[bi, hi, :, j] += 100.0
    return scores


@pytest.mark.parametrize("tma", [False, True])
def test_heavily_selected_key_blocks_of_later_heads_run_first(tma, poison, monkeypatch):
    """Key blocks that every query block selects, in the last (batch, head)s: the dk/dv kernel takes them first
    (selection.launch_order; the launch's order is checked here) and its flat program ids still reach the right
    head and key block: gradients against the float64 reference, both kernel families, ragged N."""
    b, h, n, bq, bk, topk = 2, 2, 700, 128, 64, 2
    nq, nk = -(-n // bq), -(-n // bk)
    sinks = [(1, 1, 7), (1, 0, 2), (0, 1, 10)]  # the last key block (10) is ragged
    x = forward_problem(b, h, n, 64, bq, bk, topk, scores=sink_scores(b, h, nq, nk, sinks))
    seen = []
    lists = selection.key_block_lists

    def spy(*args, **kwargs):
        out = lists(*args, **kwargs)
        seen.append((out[0].diff().tolist(), out[2].tolist()))
        return out

    monkeypatch.setattr(backward, "key_block_lists", spy)
    cfg = sla2_kernels.BwdConfig(4, 2, 4, 2, dq_tma=tma, dkdv_tma=tma)
    assert_grads(x.backward(x.dok, cfg), x.g_ref, TOL, do=x.do, o=x.o, bq=x.bq)
    (counts, order), = seen
    n_long = sum(c >= LONG_LIST_FACTOR * nq * topk / nk for c in counts)  # the sinks, and by chance others
    assert {(bi * h + hi) * nk + j for bi, hi, j in sinks} <= set(order[:n_long])
    assert order[n_long:] == sorted(order[n_long:], key=lambda f: f // nk)  # then head by head


def expected_order(counts: torch.Tensor, threshold: float) -> list[int]:
    """The dk/dv launch order in plain Python: flat ids bh·nk + j of lists ≥ threshold, longest first (ties by id),
    then the rest by head, longest first within a head (ties by id)."""
    nk, flat = counts.shape[1], counts.flatten().tolist()
    long = sorted((f for f, c in enumerate(flat) if c >= threshold), key=lambda f: (-flat[f], f))
    return long + sorted((f for f, c in enumerate(flat) if c < threshold), key=lambda f: (f // nk, -flat[f], f))


@pytest.mark.parametrize("factor,mean", [(4, 1.5), (4, 40.0), (2, 3.0)])
def test_launch_order(factor, mean):
    """Long lists (≥ factor × mean) first, longest first across heads; the rest head by head, longest first within
    a head, ties in key-block order; every key block once."""
    counts = torch.randint(0, 12, (5, 9), dtype=torch.int32)
    counts[3, 2], counts[0, 8], counts[4, 0] = 30, 25, 40
    order = selection.launch_order(counts, mean, factor).tolist()
    assert sorted(order) == list(range(counts.numel()))
    assert order == expected_order(counts, factor * mean)


def spy_dkdv_launches(monkeypatch, setting: str) -> list:
    """(kernel name, its `setting` keyword) of every dk/dv launch from now on."""
    seen = []
    run_kernel = launch.run

    def spy(name, kernel, grid, *args, **kwargs):
        if name == "dkdv":
            seen.append((kernel.__name__, kwargs.get(setting)))
        return run_kernel(name, kernel, grid, *args, **kwargs)

    monkeypatch.setattr(launch, "run", spy)
    return seen


def test_dkdv_with_k_and_v_as_register_operands(poison, monkeypatch):
    """BwdConfig.dkdv_register_kv reaches the TMA dk/dv kernel (its REGISTER_KV) and the gradients stay the
    reference's; refused without the TMA kernel. Under the interpreter dot.register_operand is the identity, so the
    compiled routing is checked against the default by the GPU test at the Wan shape."""
    x = forward_problem(1, 2, 333, 64, 128, 64, 3)
    seen = spy_dkdv_launches(monkeypatch, "REGISTER_KV")
    base = sla2_kernels.BwdConfig(4, 2, 4, 3, qs=32, dq_tma=True, dkdv_tma=True)
    got = x.backward(x.dok, replace(base, dkdv_register_kv=True))
    x.backward(x.dok, base)
    assert seen == [("sla2_bwd_dkdv_tma_kernel", True), ("sla2_bwd_dkdv_tma_kernel", False)]
    assert_grads(got, x.g_ref, TOL, do=x.do, o=x.o, bq=x.bq)
    with pytest.raises(ValueError, match="dkdv_register_kv"):
        sla2_kernels.BwdConfig(4, 2, 4, 3, dkdv_register_kv=True)


def test_pointer_dkdv_configuration_runs_the_pointer_kernel(poison, monkeypatch):
    """The dk/dv TMA options go off with the TMA kernel (BwdConfig.pointer_dkdv): a configuration with every one of
    them on, handed to the pointer kernel where TMA cannot run, launches it with the reference's gradients."""
    x = forward_problem(1, 2, 333, 64, 128, 64, 3)
    seen = spy_dkdv_launches(monkeypatch, "REGISTER_KV")
    monkeypatch.setattr(backward.layouts, "tma_hardware", lambda device: False)
    cfg = sla2_kernels.BwdConfig(4, 2, 4, 3, qs=32, dkdv_tma=True, dkdv_register_kv=True)
    assert_grads(x.backward(x.dok, cfg), x.g_ref, TOL, do=x.do, o=x.o, bq=x.bq)
    assert seen == [("sla2_bwd_dkdv_kernel", None)]


@pytest.mark.parametrize("d,rows,cols", [(64, 16, 32), (128, 16, 64), (128, 64, 32), (128, 128, 128)])
def test_linear_kernel_step_shapes(d, rows, cols, poison):
    """The linear kernel walks a query block `rows` rows a step and forms dH_I `cols` columns at a time: every split
    (including one step for the whole block and columns narrower than head_dim) gives the same gradients."""
    x = forward_problem(1, 2, 333, d, 128, 64, 3)
    cfg = sla2_kernels.BwdConfig(8, 2, 8, 2, linear_rows=rows, linear_cols=cols)
    assert_grads(x.backward(x.dok, cfg), x.g_ref, TOL, do=x.do, o=x.o, bq=x.bq)


@pytest.mark.parametrize("field, value", [("linear_rows", 48), ("linear_cols", 8)])
def test_linear_kernel_step_sizes_are_checked(field, value):
    """A linear-kernel step that is not a power of two ≥ 16 is one clear error, not a Triton compile failure."""
    x = forward_problem(1, 1, 100, 64, 64, 64, 1)
    cfg = sla2_kernels.BwdConfig(4, 2, 4, 2, **{field: value})
    with pytest.raises(ValueError, match=f"BwdConfig.{field}={value} must be a power of two"):
        x.backward(x.dok, cfg)


def test_tma_kernels_fall_back_for_misaligned_inputs(monkeypatch, poison):
    """TMA requested: aligned tensors take the TMA kernels; a dO starting off a 16-byte boundary, or a GPU
    without TMA, takes the pointer kernels, with the same gradients."""
    x = forward_problem(1, 2, 200, 64, 64, 64, 2)
    cfg = sla2_kernels.BwdConfig(4, 2, 4, 2, dq_tma=True, dkdv_tma=True)
    launched = []
    with_fallback = launch.with_fallback
    monkeypatch.setattr(launch, "with_fallback", lambda name, kernel, *a: (
        launched.append(kernel.fn.__name__), with_fallback(name, kernel, *a))[1])
    misaligned = torch.empty(x.dok.numel() + 1, dtype=x.dok.dtype)[1:].view_as(x.dok).copy_(x.dok)
    for grad_out, want in ((x.dok, ["sla2_bwd_dq_tma_kernel", "sla2_bwd_dkdv_tma_kernel"]),
                           (misaligned, ["sla2_bwd_dq_kernel", "sla2_bwd_dkdv_kernel"])):
        launched.clear()
        g = x.backward(grad_out, cfg)
        assert launched == want
        assert_grads(g, x.g_ref, TOL, do=x.do, o=x.o, bq=x.bq)
    launched.clear()
    monkeypatch.setattr(layouts, "tma_hardware", lambda device: False)
    assert_grads(x.backward(x.dok, cfg), x.g_ref, TOL, do=x.do, o=x.o, bq=x.bq)
    assert launched == ["sla2_bwd_dq_kernel", "sla2_bwd_dkdv_kernel"]


# one tile; several of both; with key block 5 of the last head in every query block's selection (a long list)
@pytest.mark.parametrize("b,h,nq,nk,topk,sink", [(2, 3, 7, 11, 4, False), (1, 2, 40, 70, 9, False),
                                                 (1, 2, 40, 70, 9, True)])
def test_key_block_lists_are_the_transpose_of_the_selection(b, h, nq, nk, topk, sink):
    scores = torch.rand(b, h, nq, nk)
    scores[-1, -1, :, 5] += 10.0 * sink
    idx = scores.topk(topk, dim=-1).indices.sort(dim=-1).values.int()
    ptr, qblk, order = selection.key_block_lists(idx, nk)
    mask = torch.zeros(b, h, nq, nk, dtype=torch.bool).scatter_(-1, idx.long(), True).view(b * h, nq, nk)
    counts = mask.sum(dim=1)
    assert ptr[0] == 0 and ptr[-1] == b * h * nq * topk
    for bh in range(b * h):
        for j in range(nk):
            lo, hi = ptr[bh * nk + j].item(), ptr[bh * nk + j + 1].item()
            assert qblk[lo:hi].tolist() == torch.nonzero(mask[bh, :, j]).flatten().tolist()
    assert order.tolist() == expected_order(counts, LONG_LIST_FACTOR * nq * topk / nk)


def blocked_sla2(q, k, v, alpha, idx, bq, bk):
    """Differentiable fp32 SLA2 at the Wan sizes: the blocked oracle (its padded query rows stay finite)."""
    from sla2_kernels import blocked_reference as br

    return br.sla2_forward(q, k, v, idx, alpha, bq, bk)[0]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 12, 32760, 128, 128, 64, 0.97, "bnhd"), (2, 3, 4680, 64, 64, 64, 0.9, "bhnd"),
                                   (1, 2, 9000, 128, 128, 128, 0.95, "bnhd"), (2, 2, 100, 128, 128, 64, 0.5, "bnhd")],
                         ids=["wan1.3b-97", "b2h3n4680d64-90", "n9000q128k128-95", "n100-shorter-than-a-block"])
@pytest.mark.parametrize("quant", [False, True])
def test_gradients_at_real_shapes_gpu(shape, quant, bwd_path):
    """H100: kernels vs autograd through the blocked fp32 oracle (sla2_kernels/blocked_reference.py, TF32 off), at the
    Wan2.1-1.3B shape among others. With quant the oracle is the exact gradient (what QAT approximates)."""
    from sla2_kernels import blocked_reference as br

    b, h, n, d, bq, bk, sparsity, layout = shape
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v, do = (torch.randn(b, h, n, d, device="cuda", generator=g).bfloat16().float() for _ in range(4))
    k = (k + 0.5 * torch.randn(1, h, 1, d, device="cuda", generator=g)).bfloat16().float()
    nq, nk = -(-n // bq), -(-n // bk)
    eye = torch.eye(d, device="cuda").expand(h, d, d)
    idx = br.router_scores(q, k, eye, eye, bq, bk).topk(ref.topk_count(nk, sparsity), dim=-1).indices
    idx = idx.sort(dim=-1).values.to(torch.int32)
    alpha = 0.1 + 0.8 * torch.rand(b, h, nq, device="cuda", generator=g)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, alpha)]
    o_ref = blocked_sla2(*leaves, idx, bq, bk)
    o_ref.backward(do)
    qk, kk, vk, dok = (to_layout(t.bfloat16(), layout) for t in (q, k, v, do))
    x = [t.requires_grad_() for t in (qk, kk, vk)]
    a = alpha.clone().requires_grad_()
    o = backend.sla2_attention(*x, idx, a, block_q=bq, block_k=bk, quant=quant, layout=layout)
    o.backward(dok)
    assert rel(from_layout(o.detach(), layout), o_ref.detach()) <= (5e-2 if quant else 1e-2)
    got = [from_layout(t.grad, layout) for t in x] + [a.grad]
    assert_grads(got, [t.grad for t in leaves], 5e-2 if quant else TOL, do=do, o=o_ref.detach(), bq=bq)


@pytest.mark.parametrize("quant", [False, True])
def test_custom_op_kernel_branch_under_the_interpreter(quant, poison, kernel_ops):
    """The CUDA implementation of torch.ops.sla2.attention / attention_backward (forward state kept for the
    backward), run here on CPU tensors under Triton's interpreter."""
    b, h, n, d, bq, bk, topk = 1, 2, 200, 64, 64, 64, 2
    q, k, v, do, sel, alpha = problem(b, h, n, d, bq, bk, topk, torch.bfloat16, "head")
    x = [to_layout(t.bfloat16(), "bnhd").requires_grad_() for t in (q, k, v)]
    a = alpha.float().requires_grad_()
    o = backend.sla2_attention(*x, sel.indices.int(), a, block_q=bq, block_k=bk, quant=quant, layout="bnhd")
    o.backward(to_layout(do.bfloat16(), "bnhd"))
    o_ref, g_ref = reference_grads(q, k, v, do, sel, alpha, bq, bk, quant=quant)
    assert rel(from_layout(o.detach(), "bnhd"), o_ref) <= 1e-2
    got = [from_layout(t.grad, "bnhd") for t in x] + [a.grad]
    assert_grads(got, g_ref, 5e-2 if quant else TOL, do=do, o=o_ref, bq=bq)
