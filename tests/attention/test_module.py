"""SLA2Attention: layouts, modes, parameter groups, calibration and its one-line errors."""

import pytest
import torch

from sla2_train.attention import SLA2Attention
from sla2_train.attention import reference as ref

H, D, N, BQ, BK = 2, 8, 45, 16, 8


def qkv(layout="bnhd", dtype=torch.float64, requires_grad=False):
    shape = (2, N, H, D) if layout == "bnhd" else (2, H, N, D)
    return [torch.randn(shape, dtype=dtype, requires_grad=requires_grad) for _ in range(3)]


def make(**kw):
    kw = {"sparsity": 0.5, "block_q": BQ, "block_k": BK, **kw}
    return SLA2Attention(H, D, **kw).double()


@pytest.mark.parametrize("alpha_mode", ["per_head", "per_block", "predicted"])
@pytest.mark.parametrize("topk", ["hard", "soft"])
def test_layouts_agree(alpha_mode, topk):
    attn = make(alpha_mode=alpha_mode, seq_len=N, topk=topk)
    q, k, v = qkv("bhnd")
    out_bhnd = attn(q, k, v, layout="bhnd")
    out_bnhd = attn(*(t.transpose(1, 2) for t in (q, k, v)), layout="bnhd")
    assert out_bnhd.shape == (2, N, H, D)
    torch.testing.assert_close(out_bnhd.transpose(1, 2), out_bhnd)


def test_hard_module_is_reference_composition():
    attn = make(alpha_init=0.7)
    with torch.no_grad():
        attn.router.proj_q.add_(torch.randn(H, D, D, dtype=torch.float64) * 0.3)
    q, k, v = qkv("bhnd")
    scores = ref.router_scores(q, k, attn.router.proj_q, attn.router.proj_k, BQ, BK)
    mask = ref.hard_topk(scores, ref.topk_count(scores.shape[-1], 0.5)).mask
    expect = ref.sla2_attention(q, k, v, mask, torch.full((1, H, 1), 0.7, dtype=torch.float64), BQ, BK)
    torch.testing.assert_close(attn(q, k, v, layout="bhnd"), expect)


def test_gradients_reach_the_right_parameters():
    q, k, v = qkv(requires_grad=True)
    soft = make(topk="soft")
    soft(q, k, v).square().sum().backward()
    assert soft.router.proj_q.grad.abs().sum() > 0 and soft.alpha.logit.grad.abs().sum() > 0
    hard = make(topk="hard")
    hard(q, k, v).square().sum().backward()
    assert hard.router.proj_q.grad is None  # hard Top-k: the router is frozen by construction
    assert hard.alpha.logit.grad.abs().sum() > 0 and q.grad.abs().sum() > 0


def test_sla_baseline_untrained_is_sparse_only():
    attn = make(variant="sla")
    assert list(attn.router_parameters()) == [] and len(list(attn.alpha_parameters())) == 1
    q, k, v = qkv("bhnd")
    mask = ref.hard_topk(ref.router_scores(q, k, *[torch.eye(D, dtype=torch.float64).expand(H, D, D)] * 2, BQ, BK), 3).mask
    torch.testing.assert_close(attn(q, k, v, layout="bhnd"), ref.sparse_attention(q, k, v, mask, BQ, BK)[0])


def test_full_variant_and_all_blocks_selected_equal_dense():
    q, k, v = qkv("bhnd")
    dense = ref.full_attention(q, k, v)
    torch.testing.assert_close(make(variant="full")(q, k, v, layout="bhnd"), dense)
    # round((1 − 0.01) · 6) = 6 = every key block
    torch.testing.assert_close(make(sparsity=0.01, alpha_init=0.3)(q, k, v, layout="bhnd"), dense)


@pytest.mark.parametrize("alpha_mode", ["per_head", "per_block", "predicted"])
def test_calibration_matches_measured_mass(alpha_mode):
    attn = make(alpha_mode=alpha_mode, seq_len=N)
    q, k, v = qkv()
    measured, estimated = attn.measure_mass(q, k, v)
    chunked, _ = attn.measure_mass(q, k, v, query_chunk=16)  # 3 chunks, the last one ragged
    torch.testing.assert_close(chunked, measured)
    assert measured.shape == estimated.shape == (H, ref.num_blocks(N, BQ))
    assert ((measured > 0) & (measured <= 1)).all()
    attn.calibrate_alpha(q, k, v)
    alpha = attn.alpha(estimated[None]).expand(1, H, measured.shape[-1])[0]
    target = {"per_head": measured.mean(-1, keepdim=True).expand_as(measured), "per_block": measured}.get(alpha_mode)
    if target is not None:
        torch.testing.assert_close(alpha.float(), target.float(), rtol=1e-4, atol=1e-4)
    else:  # predicted: the mean logit gap is closed
        gap = torch.logit(alpha.float()) - torch.logit(measured.float())
        torch.testing.assert_close(gap.mean(-1), torch.zeros(H), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sparsity": 1.0}, "sparsity must be in"),
        ({"sparsity": 0.0}, "sparsity must be in"),
        ({"block_q": 48}, "block_q must be a positive power of two"),
        ({"variant": "dense"}, "unknown variant"),
        ({"alpha_mode": "per_row"}, "unknown alpha_mode"),
        ({"alpha_mode": "per_block"}, "needs seq_len"),
        ({"alpha_init": 1.0}, "alpha_init"),
        ({"topk": "soft", "tau": 0.0}, "tau"),
        ({"backend": "cuda"}, "unknown backend"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_bad_inputs():
    attn = make()
    q, k, v = qkv()
    with pytest.raises(ValueError, match="4-D"):
        attn(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="shapes differ"):
        attn(q, k[:, :-1], v)
    with pytest.raises(TypeError, match="floating-point"):
        attn(q.long(), k.long(), v.long())
    with pytest.raises(TypeError, match="dtypes differ"):
        attn(q, k.float(), v)
    with pytest.raises(ValueError, match="expected 2 heads of head_dim 8"):
        attn(q, k, v, layout="bhnd")
    with pytest.raises(ValueError, match="unknown layout"):
        attn(q, k, v, layout="nbhd")
    with pytest.raises(ValueError, match="built for 3 query blocks"):
        make(alpha_mode="per_block", seq_len=N)(*(t[:, :30] for t in (q, k, v)))
    with pytest.raises(ValueError, match="quant=True needs topk='hard'"):
        make(topk="soft", quant=True)(q, k, v)
    with pytest.raises(RuntimeError, match="backend='triton' cannot run"):
        make(backend="triton")(q, k, v)


def test_distill_loss_matches_dense_and_subsamples_rows():
    attn = make(topk="soft", alpha_mode="per_block", seq_len=N)
    q, k, v = qkv()
    err = attn(q, k, v) - ref.full_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    torch.testing.assert_close(attn.distill_loss(q, k, v), err.square().mean().float())
    # pick a seed whose 2-of-3 subset holds the ragged last block: the loss covers exactly those rows
    seed = next(s for s in range(100) if 2 in torch.randperm(3, generator=torch.Generator().manual_seed(s))[:2])
    chosen = torch.randperm(3, generator=torch.Generator().manual_seed(seed))[:2].sort().values
    rows = torch.cat([torch.arange(b * BQ, min((b + 1) * BQ, N)) for b in chosen.tolist()])
    part = attn.distill_loss(q, k, v, num_query_blocks=2, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(part, err[:, rows].square().mean().float())
    part.backward()
    assert attn.router.proj_q.grad.abs().sum() > 0
