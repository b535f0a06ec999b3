"""The benchmark's metrics and the α fits (least squares, least absolute error) against their definitions, computed
the slow way."""

import math

import pytest
import torch

from sla2_train.attention import SLA2Attention
from sla2_train.attention import distill as D
from sla2_train.attention import reference as ref
from sla2_train.attnbench.metrics import Teacher, gap_closed, mask_metrics


def _qkv(n, h=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, h, n, d, generator=g, dtype=torch.float64) * s for s in (1.5, 1.5, 1.0)]


@pytest.mark.parametrize("n,bq,bk", [(40, 8, 4), (45, 16, 8), (37, 8, 8)])
def test_block_mass_recall_mass_and_l1_match_loops(n, bq, bk):
    q, k, v = _qkv(n, seed=n)
    t = Teacher(q, k, v, bq, bk)
    nq, nk = ref.num_blocks(n, bq), ref.num_blocks(n, bk)
    p = torch.softmax((q @ k.transpose(-1, -2)).float() / math.sqrt(8), -1)
    for h in range(2):
        for i in range(nq):
            rows = range(i * bq, min((i + 1) * bq, n))
            for j in range(nk):
                cols = range(j * bk, min((j + 1) * bk, n))
                expect = sum(p[0, h, r, c].item() for r in rows for c in cols) / len(rows)
                assert t.block_mass[0, h, i, j].item() == pytest.approx(expect, abs=1e-5)
    k_sel = 2
    mask = ref.hard_topk(torch.randn(1, 2, nq, nk), k_sel).mask
    best = t.best_mask(k_sel)
    for h in range(2):  # best-mass blocks hold at least as much mass as any other choice of k blocks
        for i in range(nq):
            assert t.block_mass[0, h, i][best[0, h, i]].sum() >= t.block_mass[0, h, i][mask[0, h, i]].sum() - 1e-6
    alpha = torch.rand(1, 2, nq)
    m = mask_metrics(t, mask, alpha, best)
    tok = ref.expand_block_mask(mask, n, n, bq, bk)
    o_s = torch.stack([torch.softmax(
        (q[0, h] @ k[0, h].T).float() / math.sqrt(8) + torch.where(tok[0, h], 0.0, -math.inf), -1) @ v[0, h].float()
        for h in range(2)])[None]
    o_full = p @ v.float()
    for h in range(2):
        l1 = (o_s[0, h] - o_full[0, h]).abs().sum() / o_full[0, h].abs().sum()
        assert m["sparse_l1"][h].item() == pytest.approx(l1.item(), rel=1e-4)
        recall = sum((mask[0, h, i] & best[0, h, i]).sum().item() / k_sel for i in range(nq)) / nq
        assert m["recall"][h].item() == pytest.approx(recall, abs=1e-6)
        mass = sum((p[0, h, r] * tok[0, h, r]).sum().item() for r in range(n)) / n
        assert m["mass"][h].item() == pytest.approx(mass, abs=1e-5)
    o_l = ref.linear_attention_complement(q.float(), k.float(), v.float(), mask, bq, bk)
    a_rows = alpha.repeat_interleave(bq, dim=-1)[..., :n, None]  # each row's α, written out, not alpha_mix
    sla2 = a_rows * o_s + (1 - a_rows) * o_l
    l1 = (sla2 - o_full).abs().sum(dim=(0, 2, 3)) / o_full.abs().sum(dim=(0, 2, 3))
    torch.testing.assert_close(m["sla2_l1"], l1, rtol=1e-4, atol=1e-6)


def test_gap_closed():
    assert gap_closed(0.5, 0.4, 0.3) == pytest.approx(0.5)
    assert gap_closed(0.5, 0.6, 0.3) == pytest.approx(-0.5)
    assert gap_closed(0.3, 0.2, 0.3) is None  # nothing to close
    assert gap_closed(0.3, 0.2, 0.299) is None  # within 2%: noise
    assert gap_closed(0.3, 0.2, 0.4) is None  # best-mass is worse than the heuristic


def test_alpha_closed_form_is_the_least_squares_minimum():
    g = torch.Generator().manual_seed(1)
    o_full, o_s, o_l = (torch.randn(1, 2, 24, 8, generator=g, dtype=torch.float64) for _ in range(3))
    o_full = 0.7 * o_s + 0.3 * o_l + 0.2 * o_full  # an interior optimum
    num, den = D.alpha_normal_equations(o_full, o_s, o_l, block_q=8)
    alpha = D.clipped_ratio(num.sum(-1), den.sum(-1))[0]  # per head
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    for h in range(2):
        a = grid[:, None, None]
        err = ((a * o_s[0, h] + (1 - a) * o_l[0, h] - o_full[0, h]) ** 2).sum((1, 2))
        assert alpha[h].item() == pytest.approx(grid[err.argmin()].item(), abs=1e-4)
    # clipped: a target beyond O_s gives α = 1, a target beyond O_l gives α = 0
    assert D.clipped_ratio(*D.alpha_normal_equations(2 * o_s - o_l, o_s, o_l, 8)).eq(1).all()
    assert D.clipped_ratio(*D.alpha_normal_equations(2 * o_l - o_s, o_s, o_l, 8)).eq(0).all()


@pytest.mark.parametrize("alpha_mode", ["per_head", "per_block"])
def test_least_squares_calibration_minimises_the_hard_sla2_error(alpha_mode):
    n, bq, bk = 45, 16, 8
    q, k, v = (t.float() for t in _qkv(n, seed=5))
    attn = SLA2Attention(2, 8, sparsity=0.6, block_q=bq, block_k=bk, alpha_mode=alpha_mode, seq_len=n)
    attn.calibrate_alpha(q, k, v, layout="bhnd", fit=D.LeastSquaresFit(query_chunk=16))  # 3 chunks, one ragged

    def err(a):
        with torch.no_grad():
            attn.alpha.logit.copy_(a)
            return (attn(q, k, v, layout="bhnd") - ref.full_attention(q, k, v)).square().sum().item()

    fitted = attn.alpha.logit.detach().clone()
    best = err(fitted)
    for delta in (-0.05, 0.05):  # any nudge of any α makes the hard-mask error worse
        for idx in range(fitted.numel()):
            nudged = fitted.clone()
            nudged.view(-1)[idx] += delta
            assert err(nudged) >= best - 1e-7


@pytest.mark.parametrize("alpha_mode", ["per_head", "per_block"])
def test_least_absolute_calibration_minimises_the_hard_sla2_l1_error(alpha_mode):
    """Per head or per query block, the fitted α's absolute error is the grid minimum's (to the fit's bins),
    on a batch of two samples fitted jointly, rows in ragged chunks."""
    n, bq, bk, bins = 45, 16, 8, 4096
    q, k, v = (torch.cat([t, t.flip(-2) * 0.5]).float() for t in _qkv(n, seed=6))
    attn = SLA2Attention(2, 8, sparsity=0.6, block_q=bq, block_k=bk, alpha_mode=alpha_mode, seq_len=n)
    fit = D.LeastAbsoluteFit(query_chunk=16, bins=bins)
    alpha, _ = fit(attn, q, k, v)
    mask = ref.hard_topk(attn._scores(q, k), ref.topk_count(ref.num_blocks(n, bk), 0.6)).mask
    o_s, o_l = D.hard_branches(q, k, v, mask, bq, bk)
    full = ref.full_attention(q, k, v)
    rows = torch.arange(n) // bq
    grid = torch.linspace(0, 1, 2001)
    groups = [(h, None) for h in range(2)] if alpha_mode == "per_head" else [
        (h, i) for h in range(2) for i in range(ref.num_blocks(n, bq))]
    for h, i in groups:
        sel = slice(None) if i is None else rows == i
        d, b = (o_s - o_l)[:, h, sel], (full - o_l)[:, h, sel]
        err = lambda a: (a * d - b).abs().sum().item()  # noqa: E731
        fitted = alpha[h, 0 if i is None else i].item()
        best = min(err(a.item()) for a in grid)
        slope = d.abs().sum().item()  # |∂err/∂α| ≤ Σ|d|: half a bin moves the error at most this much
        assert err(fitted) <= best + slope / bins, (h, i)
        assert err(fitted) <= err(1.0) + 1e-6  # never worse than the sparse branch alone


def test_least_absolute_fit_is_the_weighted_median_and_handles_edges():
    fit = D.LeastAbsoluteFit(bins=8)
    # ratios 0.1 (weight 1), 0.6 (weight 3), 0.9 (weight 1): the weighted median is 0.6, in bin [0.5, 0.625)
    d = torch.tensor([1.0, 3.0, 1.0]).view(1, 1, 3, 1)
    b = torch.tensor([0.1, 1.8, 0.9]).view(1, 1, 3, 1)
    stats = fit.statistics(b, d, torch.zeros_like(d), block_q=4)  # full = b, o_s = d, o_l = 0
    assert fit.solve(stats.sum(0))[0, 0].item() == pytest.approx(0.5625)
    # every ratio beyond 1 (or below 0): α = 1 (or 0) exactly; branches that agree everywhere: α = 1
    assert fit.solve(fit.statistics(2 * d, d, torch.zeros_like(d), 4).sum(0)).item() == 1.0
    assert fit.solve(fit.statistics(-d, d, torch.zeros_like(d), 4).sum(0)).item() == 0.0
    assert fit.solve(fit.statistics(b, torch.zeros_like(d), torch.zeros_like(d), 4).sum(0)).item() == 1.0
    with pytest.raises(ValueError, match="bins"):
        D.LeastAbsoluteFit(bins=0)
