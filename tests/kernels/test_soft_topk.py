"""SoftTop-k's λ kernel against its PyTorch twin (reference/soft_topk.solve_lambda), under the interpreter on a
CPU and at the Wan shapes on a GPU; and the one place that picks the solver."""

import pytest
import torch

import sla2_kernels
from sla2_kernels import tuning
from sla2_train.attention import SLA2Attention
from sla2_train.attention import backend
from sla2_train.attention import reference as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (shape of the logits, scale): ragged row widths (padded to a power of two in the kernel, 1300 to 2048); scale 30
# puts most σ at 0 or 1, where a sloppy bracket or summation shows.
CASES = [((3, 37), 1.0), ((2, 2, 5, 136), 10.0), ((2, 1, 3, 20), 30.0), ((2, 1300), 5.0), ((4, 1), 1.0)]


def _logits(shape, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(DEVICE)


def _check(z, k):
    """The same mask σ(z + λ) as the twin's, and rows summing to k. λ itself is compared where it is determined:
    on a peaked row (or at k = n) Σσ is flat to float64 over a range of λ, and any point of it is a root."""
    lam = sla2_kernels.soft_topk_lambda(z, k)
    want = ref.solve_lambda(z, k)
    assert lam.shape == want.shape == z.shape[:-1] + (1,) and lam.dtype == torch.float64
    mask, mask_want = torch.sigmoid(z + lam), torch.sigmoid(z + want)
    assert bool(((mask - mask_want).abs() <= 1e-10).all()), float((mask - mask_want).abs().max())
    slope = (mask_want * (1 - mask_want)).sum(-1, keepdim=True)  # dΣσ/dλ
    steep = slope > 1e-3
    assert bool(((lam - want).abs() <= 1e-12 * (1 + want.abs()))[steep].all()), float((lam - want)[steep].abs().max())
    if k < z.shape[-1]:  # k = n puts λ at the bracket's end, where every σ is 1 to float64's precision
        sums = torch.sigmoid(z + lam).sum(-1)
        assert bool(((sums - k).abs() <= 1e-9 * k).all()), float((sums - k).abs().max())


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-s{c[1]:g}")
def test_lambda_matches_reference(case):
    shape, scale = case
    z = _logits(shape, scale, seed=shape[-1])
    n = shape[-1]
    for k in sorted({1, max(1, n // 3), max(1, n - 1), n}):
        _check(z, k)


def test_lambda_of_float32_logits_and_no_rows():
    z = _logits((3, 50), 4.0, seed=1).float()
    _check(z, 7)  # computed in float64 like the twin, whatever the input dtype
    assert sla2_kernels.soft_topk_lambda(torch.zeros(0, 9, device=DEVICE), 2).shape == (0, 1)


@pytest.mark.parametrize("k", [0, 10, True, 2.0])
def test_bad_k_raises_one_clear_line(k):
    match = rf"^sla2_kernels: topk must be an int in \[1, 9\] \(number of key blocks\), got {k!r}$"
    with pytest.raises(ValueError, match=match):
        sla2_kernels.soft_topk_lambda(torch.zeros(2, 9, device=DEVICE), k)


def test_bad_logits_raise_one_clear_line():
    with pytest.raises(ValueError, match=r"soft_topk_lambda needs logits \[\.\.\., n\] with n >= 1, got \(3, 0\)"):
        sla2_kernels.soft_topk_lambda(torch.zeros(3, 0, device=DEVICE), 1)


def test_rows_wider_than_the_kernel_takes_go_to_the_twin():
    """A program holds a whole row: wider rows are refused in one line, and the solver choice sends them to the
    PyTorch twin (which has no width limit)."""
    wide = tuning.SOFT_TOPK_MAX_ROW + 1
    with pytest.raises(ValueError, match=rf"^sla2_kernels: soft_topk_lambda holds a row in one program, up to "
                                         rf"{tuning.SOFT_TOPK_MAX_ROW} key blocks; got {wide}$"):
        sla2_kernels.soft_topk_lambda(torch.zeros(1, wide, device=DEVICE), 1)
    assert backend.lambda_kernel_missing(wide) and not backend.lambda_kernel_missing(tuning.SOFT_TOPK_MAX_ROW)
    attn = SLA2Attention(2, 64, topk="soft")
    solver = backend.lambda_solver(attn, torch.zeros(1, 2, 1, wide, device=DEVICE))
    assert solver is (ref.solve_lambda if DEVICE == "cuda" else torch.ops.sla2.soft_topk_lambda)


def test_solver_choice():
    """One place picks λ's solver: the op (kernel on CUDA, twin on CPU) unless backend='reference'."""
    scores = torch.randn(1, 2, 3, 10, device=DEVICE)
    auto, reference = (SLA2Attention(2, 64, topk="soft", backend=b) for b in ("auto", "reference"))
    assert backend.lambda_solver(auto, scores) is torch.ops.sla2.soft_topk_lambda
    assert backend.lambda_solver(reference, scores) is ref.solve_lambda
    z = scores.double() / 0.1
    torch.testing.assert_close(torch.ops.sla2.soft_topk_lambda(z, 3), ref.solve_lambda(z, 3), rtol=0, atol=1e-12)


def test_stage1_loss_same_with_either_solver():
    """The stage-1 loss and its gradients do not depend on which solver found λ (λ carries no autograd graph:
    its gradient is the implicit-function formula of reference/soft_topk.py either way). On a CPU the op runs the
    twin, so this checks the op's path through the loss (its schema, the autograd Function's arguments); on a
    GPU it compares the kernel's λ with the twin's inside a real loss."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 300, 2, 64, device=DEVICE) for _ in range(3))
    results = []
    for b in ("auto", "reference"):
        torch.manual_seed(1)
        att = SLA2Attention(2, 64, sparsity=0.8, block_q=64, block_k=64, topk="soft", backend=b).to(DEVICE)
        loss = att.distill_loss(q, k, v, generator=torch.Generator(device=DEVICE).manual_seed(2))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in att.router_parameters()]))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l0, l1, rtol=1e-6, atol=0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.gpu
@pytest.mark.parametrize("shape, k", [((1, 12, 256, 512), 15), ((1, 40, 591, 1182), 35), ((8, 2, 68, 136), 4)],
                         ids=["wan1.3b", "wan14b", "testbed-b8"])
def test_lambda_at_real_router_shapes(shape, k):
    g = torch.Generator(device="cuda").manual_seed(shape[-1])
    z = torch.randn(shape, device="cuda", generator=g, dtype=torch.float64) * 10
    _check(z, k)
