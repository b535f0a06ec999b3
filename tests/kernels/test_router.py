"""Router kernels (pooling + projections + scores) and Top-k against the reference, under the interpreter."""

import math

import pytest
import torch

import sla2_kernels
from sla2_kernels import routing
from sla2_train.attention import reference as ref

# (B, H, N, D, block_q, block_k, dtype, layout, strided, topk): ragged N everywhere but one case.
CASES = [
    (1, 2, 300, 64, 64, 64, torch.bfloat16, "bhnd", False, 2),
    (2, 1, 200, 128, 128, 64, torch.float16, "bnhd", True, 1),
    (1, 2, 257, 64, 64, 128, torch.bfloat16, "bnhd", False, 3),
    (1, 1, 384, 128, 128, 128, torch.float16, "bhnd", True, 3),
    (2, 3, 200, 64, 64, 64, torch.bfloat16, "bhnd", False, 2),  # batch and head both index each head's projections
]


def _projections(H, D, seed):
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(D).expand(H, D, D)
    def one():
        return eye + 0.3 * torch.randn(H, D, D, generator=g) / math.sqrt(D)

    return one(), one()


def _check_topk(indices, ref_scores, topk):
    """Indices are a Top-k of the reference scores (ties may pick either block), ascending and distinct."""
    assert indices.dtype == torch.int32 and indices.shape[-1] == topk
    idx = indices.long()
    assert bool((idx[..., 1:] > idx[..., :-1]).all()), "indices not strictly ascending"
    chosen = torch.gather(ref_scores, -1, idx).sort(dim=-1, descending=True).values
    best = ref_scores.topk(topk, dim=-1).values
    tol = 1e-5 * (1 + best.abs())
    assert bool(((chosen - best).abs() <= tol).all()), "a selected block scores below the reference Top-k"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}H{c[1]}N{c[2]}D{c[3]}q{c[4]}k{c[5]}-{c[7]}")
@pytest.mark.parametrize("shared_state", [False, True], ids=["alone", "kv_state"])
def test_router_matches_reference(case, shared_state, poisoned, kt):
    B, H, N, D, bq, bk, dtype, layout, strided, topk = case
    (q, k, v), (qf, kf, _) = kt.make_qkv(B, H, N, D, dtype, layout, strided)
    proj_q, proj_k = _projections(H, D, seed=N + D)
    state = sla2_kernels.precompute(k, v, block_k=bk, layout=layout) if shared_state else None
    scores, indices = sla2_kernels.router(
        q, k, proj_q, proj_k, block_q=bq, block_k=bk, topk=topk, layout=layout, kv_state=state
    )
    kt.assert_all_written(poisoned)
    ref_scores = ref.router_scores(qf, kf, proj_q, proj_k, bq, bk)
    assert scores.shape == ref_scores.shape and scores.dtype == torch.float32
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-5)
    _check_topk(indices, ref_scores, topk)


def test_router_sums_more_partials_than_a_tile(kt, monkeypatch):
    """μ_K from more of pool_sums_kernel's partial sums than pooled_project_kernel adds in one load (three tiles of
    PARTS_TILE, the last one ragged): the scores as the reference's, and as with the precompute's μ_K."""
    from sla2_kernels import router_kernels, routing

    tile = router_kernels.PARTS_TILE.value
    n, bq, bk = (2 * tile + 5) * 64, 64, 64
    (q, k, v), _ = kt.make_qkv(1, 1, n, 64, torch.bfloat16, "bhnd")
    k = (k + 2.0 * torch.randn(64)).bfloat16()  # a larger per-channel offset: μ_K weighs in every score
    qf, kf = q.float(), k.float()
    proj_q, proj_k = _projections(1, 64, seed=7)
    monkeypatch.setattr(routing, "ROUTER_POOL_PROGRAMS_PER_SM", 4 * tile)  # one run, so one partial, a query block
    scores, _ = sla2_kernels.router(q, k, proj_q, proj_k, block_q=bq, block_k=bk, topk=2, layout="bhnd")
    ref_scores = ref.router_scores(qf, kf, proj_q, proj_k, bq, bk)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-5)
    state = sla2_kernels.precompute(k, v, block_k=bk, layout="bhnd")
    shared, _ = sla2_kernels.router(q, k, proj_q, proj_k, block_q=bq, block_k=bk, topk=2, layout="bhnd",
                                    kv_state=state)
    torch.testing.assert_close(scores, shared, rtol=1e-5, atol=1e-6)


def test_router_keeps_every_block(kt):
    (q, k, _), (qf, kf, _) = kt.make_qkv(1, 1, 200, 64, torch.bfloat16, "bhnd")
    proj_q, proj_k = _projections(1, 64, seed=3)
    nk = 4
    _, indices = sla2_kernels.router(q, k, proj_q, proj_k, block_q=64, block_k=64, topk=nk, layout="bhnd")
    assert torch.equal(indices, torch.arange(nk, dtype=torch.int32).expand_as(indices))


def test_blocked_router_reference_matches_reference(kt):
    """The router oracle of the GPU tests equals the reference."""
    from sla2_kernels import blocked_reference

    (_, _, _), (qf, kf, _) = kt.make_qkv(2, 2, 300, 64, torch.bfloat16, "bhnd")
    proj_q, proj_k = _projections(2, 64, seed=5)
    torch.testing.assert_close(
        blocked_reference.router_scores(qf, kf, proj_q, proj_k, 64, 128),
        ref.router_scores(qf, kf, proj_q, proj_k, 64, 128), rtol=1e-5, atol=1e-6,
    )


@pytest.mark.parametrize("nk, topk", [(7, 3), (512, 15), (600, 31), (100, 100)])
def test_radix_topk_with_ties_and_signs(nk, topk):
    g = torch.Generator().manual_seed(nk + topk)
    s = torch.randn(2, 3, 5, nk, generator=g)
    s[..., ::5] = s[..., 1:2]  # ties across the selection boundary
    s[..., 0] = -0.0
    _check_topk(routing.topk_indices(s, topk), s, topk)


@pytest.mark.parametrize("launch", [(1, 1), (2, 2), (8, 8)])
def test_radix_topk_launch_shapes(launch):
    """Rows per program that do not divide the row count leave a partial last program."""
    g = torch.Generator().manual_seed(sum(launch))
    s = torch.randn(1, 3, 7, 300, generator=g)
    s[..., ::5] = s[..., 1:2]
    _check_topk(routing.topk_radix(s, 9, *launch), s, 9)
