"""SoftTop-k: rows sum to k, and the implicit-function gradient is the true derivative."""

import pytest
import torch

from sla2_train.attention import reference as ref


@pytest.mark.parametrize("k,tau", [(1, 0.1), (3, 0.1), (6, 0.5)])
def test_rows_sum_to_k(k, tau):
    scores = torch.randn(2, 3, 5, 9, dtype=torch.float64)
    m = ref.soft_topk(scores, k, tau)
    assert ((m > 0) & (m < 1)).all()
    torch.testing.assert_close(m.sum(-1), torch.full((2, 3, 5), float(k), dtype=torch.float64), rtol=0, atol=1e-9)
    # the soft mask puts its weight on the hard Top-k blocks
    assert torch.equal(m.topk(k, -1).indices.sort(-1).values, ref.hard_topk(scores, k).indices)


@pytest.mark.parametrize("detach", [False, True])
def test_gradient_matches_finite_differences(detach):
    scores = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, 7, dtype=torch.float64)
    if detach:
        # with λ held fixed at its solved value the map is an elementwise sigmoid
        lam = (ref.soft_topk(scores, 3, 0.3).logit() - scores / 0.3).detach()

        def f(s):
            return (torch.sigmoid(s / 0.3 + lam) * weights).sum()

        expect = torch.autograd.grad(f(scores), scores)[0]
        got = torch.autograd.grad((ref.soft_topk(scores, 3, 0.3, detach_lambda=True) * weights).sum(), scores)[0]
        torch.testing.assert_close(got, expect)
    else:
        assert torch.autograd.gradcheck(lambda s: ref.soft_topk(s, 3, 0.3) * weights, (scores,), eps=1e-6, atol=1e-6)


def test_row_sum_constraint_holds_in_the_gradient():
    scores = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(ref.soft_topk(scores, 4).sum(), scores)
    torch.testing.assert_close(g, torch.zeros_like(g), rtol=0, atol=1e-9)


def test_k_equal_to_all_blocks_gives_ones():
    scores = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    m = ref.soft_topk(scores, 6)
    assert torch.equal(m, torch.ones_like(m))
    m.sum().backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))


def test_bad_k_and_tau():
    with pytest.raises(ValueError, match="k=0"):
        ref.soft_topk(torch.randn(2, 5), 0)
    with pytest.raises(ValueError, match="tau"):
        ref.soft_topk(torch.randn(2, 5), 2, tau=0.0)
