"""SoftTop-k: rows sum to k, and the implicit-function gradient is the true derivative."""

import pytest
import torch

from sla2_train.attention import SLA2Attention
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


@pytest.mark.parametrize("detach", [False, True])
def test_logits_gradient_matches_finite_differences(detach):
    scores = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, 7, dtype=torch.float64)
    u = ref.soft_topk_logits(scores, 3, 0.3, detach)
    torch.testing.assert_close(torch.sigmoid(u), ref.soft_topk(scores, 3, 0.3, detach))
    if not detach:
        f = lambda s: torch.nn.functional.logsigmoid(ref.soft_topk_logits(s, 3, 0.3)) * weights  # noqa: E731
        assert torch.autograd.gradcheck(f, (scores,), eps=1e-6, atol=1e-6)
    else:
        # λ held fixed: u = s/τ + λ, so ∂u/∂s is 1/τ on the diagonal
        (g,) = torch.autograd.grad((u * weights).sum(), scores)
        torch.testing.assert_close(g, weights / 0.3)


def test_log_mask_is_finite_where_the_mask_underflows():
    """Peaked scores at τ = 0.1: σ(u) is exactly 0 in float32, but log σ(u) and its gradient stay finite."""
    scores = torch.tensor([[12.0, 0.0, -12.0, 1.0, 11.5, -9.0]], requires_grad=True)
    u = ref.soft_topk_logits(scores, 2, 0.1)
    assert (torch.sigmoid(u) == 0).any()
    log_m = torch.nn.functional.logsigmoid(u)
    assert log_m.isfinite().all()
    torch.testing.assert_close(torch.sigmoid(u).sum(-1), torch.tensor([2.0]))
    (g,) = torch.autograd.grad((log_m * torch.randn(6)).sum(), scores)
    assert g.isfinite().all() and g.abs().sum() > 0


def _peaked_qkv(seed, frames=4, height=8, width=12, heads=4, dim=128, scale=0.95):
    """Smooth low-frequency content on a (frames, h, w) grid: logits span ~35 within a row, pooled router
    scores span ~10, as trained video attention does (Gaussian inputs never get there)."""
    g = torch.Generator().manual_seed(seed)
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    pos = torch.stack([t / frames, y / height, x / width], -1).reshape(-1, 3).double()
    feats = torch.cos(pos @ (torch.randn(3, 16, generator=g).double() * 2) * torch.pi + torch.rand(16, generator=g) * 6.3)
    w = torch.randn(3, heads, 16, dim, generator=g).double()
    q, k, v = (torch.einsum("nc,hcd->hnd", feats, w[i])[None] for i in range(3))
    return (q * scale).float(), (k * scale).float(), v.float()


def test_stage1_on_peaked_attention_has_finite_gradients_and_learns():
    torch.manual_seed(0)
    q, k, v = _peaked_qkv(0)
    attn = SLA2Attention(4, 128, sparsity=0.97, block_q=32, block_k=16, topk="soft")
    scores = attn._scores(q, k).detach()
    assert (scores.amax(-1) - scores.amin(-1)).mean() > 8  # peaked enough that σ(u) underflows in float32
    opt = torch.optim.Adam([*attn.router_parameters(), *attn.alpha_parameters()], lr=3e-4)
    losses = []
    for _ in range(8):
        loss = attn.distill_loss(q, k, v, layout="bhnd")
        opt.zero_grad()
        loss.backward()
        for p in (attn.router.proj_q, attn.router.proj_k):
            assert p.grad.isfinite().all() and p.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
