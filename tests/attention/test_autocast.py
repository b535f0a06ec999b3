"""Under a bf16-mixed trainer's autocast the attention's float32 computations stay float32: the router's scores
(in the stage-1 loss too), α calibration and the router monitor give what they give without autocast
(attention/precision.py). Autocast would otherwise run their matmuls in bf16, `.float()` inputs included, and
stage 1 would rank other scores than inference does."""

import pytest
import torch

from sla2_train.attention import SLA2Attention
from sla2_train.attention.distill import LeastAbsoluteFit
from sla2_train.lit.monitoring import hard_topk_metrics

from .test_distill_chunks import every_term

BQ, BK, HEADS, DIM = 32, 16, 2, 64


def make(n: int, seed: int, **options):
    g = torch.Generator().manual_seed(seed)
    attn = SLA2Attention(HEADS, DIM, sparsity=0.75, block_q=BQ, block_k=BK, topk="soft", tau=0.1, **options)
    with torch.no_grad():
        for p in (attn.router.proj_q, attn.router.proj_k):
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    # what the dense transformer hands over under bf16 autocast: bf16 q, k, v; scores of size ~10
    q, k, v = (torch.randn(2, HEADS, n, DIM, generator=g).mul(s).bfloat16() for s in (3.0, 1.0, 1.0))
    return attn, q, k, v


def bf16_autocast(enabled: bool = True):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def loss_and_grads(attn, q, k, v, autocast: bool):
    """The loss under autocast or not, its backward outside autocast (as Lightning's precision plugin runs them)."""
    attn.zero_grad()
    with bf16_autocast(autocast):
        loss = attn.distill_loss(q, k, v, layout="bhnd", objective=every_term())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in attn.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("n", [160, 200])  # 200: a ragged last query block
def test_router_scores_ignore_autocast(n):
    attn, q, k, _ = make(n, seed=n)
    plain = attn._scores(q, k)
    with bf16_autocast():
        under = attn._scores(q, k)
        # what autocast alone does to the same products: the near-ties this guards against
        rounded = attn.router(q.float(), k.float(), BQ, BK)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, plain, rtol=0, atol=0)
    assert (rounded.float() - plain).abs().max() > 1e-3


def test_the_stage1_loss_ranks_float32_scores_under_autocast():
    """The loss itself runs in the trainer's precision; the router's scores in it do not: the gradient reaches
    the router through float32 scores, and the hard mask it trains for is the one inference picks."""
    attn, q, k, v = make(200, seed=5)
    seen = []
    scores = attn._scores
    attn._scores = lambda *a: seen.append(scores(*a)) or seen[-1]
    _, grads = loss_and_grads(attn, q, k, v, autocast=True)
    assert seen and all(s.dtype == torch.float32 for s in seen)
    torch.testing.assert_close(seen[0].detach(), scores(q, k), rtol=0, atol=0)
    assert grads["router.proj_k"].abs().sum() > 0


def test_alpha_calibration_and_the_monitor_ignore_autocast():
    attn, q, k, v = make(200, seed=3)
    fit = LeastAbsoluteFit()
    alpha, estimate = fit(attn, q, k, v)
    metrics = hard_topk_metrics(attn, q, k, v, query_blocks=4)
    measured = attn.measure_mass(q, k, v, layout="bhnd")
    with bf16_autocast():
        alpha_a, estimate_a = fit(attn, q, k, v)
        metrics_a = hard_topk_metrics(attn, q, k, v, query_blocks=4)
        measured_a = attn.measure_mass(q, k, v, layout="bhnd")
    torch.testing.assert_close(alpha_a, alpha, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(estimate_a, estimate, rtol=1e-6, atol=1e-7)
    for (a, b) in zip(measured_a, measured):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert metrics_a.keys() == metrics.keys()
    for name in metrics:
        torch.testing.assert_close(metrics_a[name], metrics[name], rtol=1e-6, atol=1e-7)
