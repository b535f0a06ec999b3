"""The reference against formulas written independently here, row by row, at ragged lengths."""

import math

import pytest
import torch

from sla2_train.attention import reference as ref

SHAPES = [  # (B, H, N, D, b_q, b_k): N a multiple of neither block size, and one exact fit
    (1, 2, 45, 8, 16, 8),
    (2, 1, 37, 4, 8, 16),
    (1, 3, 64, 6, 16, 8),
]


def random_qkv(b, h, n, d, dtype=torch.float64):
    return [torch.randn(b, h, n, d, dtype=dtype) * 1.5 for _ in range(3)]


def random_mask(b, h, nq, nk, p=0.4):
    mask = torch.rand(b, h, nq, nk) < p
    mask[..., torch.randint(nk, (1,))] = True  # every row keeps at least one block
    return mask


def brute_sla2_row(q, k, v, i, mask, alpha_i, bq, bk):
    """O_i = α softmax over selected tokens + (1−α) rownorm(φq_i·φk_j) over the rest (docs/method.md)."""
    n, d = k.shape
    sel = [j for j in range(n) if mask[i // bq, j // bk]]
    rest = [j for j in range(n) if not mask[i // bq, j // bk]]
    s = torch.stack([q[i] @ k[j] / math.sqrt(d) for j in sel])
    w = torch.exp(s - s.max())
    o_s = sum(w[t] * v[j] for t, j in enumerate(sel)) / w.sum()
    if not rest:
        return o_s  # nothing in the linear branch: the true selected mass is 1
    fq = torch.softmax(q[i], 0)
    a = torch.stack([fq @ torch.softmax(k[j], 0) for j in rest])
    o_l = sum(a[t] * v[j] for t, j in enumerate(rest)) / a.sum()
    return alpha_i * o_s + (1 - alpha_i) * o_l


@pytest.mark.parametrize("shape", SHAPES)
def test_sla2_equals_row_by_row_formula(shape):
    b, h, n, d, bq, bk = shape
    q, k, v = random_qkv(b, h, n, d)
    nq, nk = ref.num_blocks(n, bq), ref.num_blocks(n, bk)
    mask = random_mask(b, h, nq, nk)
    mask[0, 0, 0] = True  # one query block with an empty complement
    alpha = torch.rand(b, h, nq, dtype=torch.float64) * 0.8 + 0.1
    out = ref.sla2_attention(q, k, v, mask, alpha, bq, bk)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                expect = brute_sla2_row(q[bi, hi], k[bi, hi], v[bi, hi], i, mask[bi, hi], alpha[bi, hi, i // bq], bq, bk)
                torch.testing.assert_close(out[bi, hi, i], expect, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_lse_is_log_of_selected_exp_sum(shape):
    b, h, n, d, bq, bk = shape
    q, k, v = random_qkv(b, h, n, d)
    mask = random_mask(b, h, ref.num_blocks(n, bq), ref.num_blocks(n, bk))
    _, lse = ref.sparse_attention(q, k, v, mask, bq, bk)
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    tok = torch.zeros(b, h, n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            tok[:, :, i, j] = mask[:, :, i // bq, j // bk]
    expect = torch.log(torch.where(tok, torch.exp(s), 0).sum(-1))
    torch.testing.assert_close(lse, expect, rtol=1e-12, atol=1e-12)


def test_pooling_divides_ragged_tail_by_true_count():
    x = torch.randn(2, 3, 21, 5, dtype=torch.float64)
    pooled = ref.mean_pool(x, 8)
    assert pooled.shape == (2, 3, 3, 5)
    torch.testing.assert_close(pooled[:, :, 0], x[:, :, :8].mean(2))
    torch.testing.assert_close(pooled[:, :, 2], x[:, :, 16:].mean(2))


def test_router_scores_formula():
    b, h, n, d, bq, bk = 1, 2, 45, 8, 16, 8
    q, k, _ = random_qkv(b, h, n, d)
    wq, wk = torch.randn(h, d, d, dtype=torch.float64), torch.randn(h, d, d, dtype=torch.float64)
    scores = ref.router_scores(q, k, wq, wk, bq, bk)
    ks = k - k.mean(2, keepdim=True)
    for hi in range(h):
        for i in range(ref.num_blocks(n, bq)):
            for j in range(ref.num_blocks(n, bk)):
                qb = q[0, hi, i * bq : (i + 1) * bq].mean(0) @ wq[hi]
                kb = ks[0, hi, j * bk : (j + 1) * bk].mean(0) @ wk[hi]
                torch.testing.assert_close(scores[0, hi, i, j], qb @ kb / math.sqrt(d))


def test_every_block_selected_is_full_attention():
    """Whatever α has learnt: with an empty complement the selected mass is exactly 1."""
    for b, h, n, d, bq, bk in SHAPES:
        q, k, v = random_qkv(b, h, n, d)
        mask = torch.ones(b, h, ref.num_blocks(n, bq), ref.num_blocks(n, bk), dtype=torch.bool)
        alpha = torch.rand(b, h, mask.shape[2], dtype=torch.float64)
        out = ref.sla2_attention(q, k, v, mask, alpha, bq, bk)
        torch.testing.assert_close(out, ref.full_attention(q, k, v), rtol=1e-12, atol=1e-12)


def test_soft_mask_with_hard_values_equals_hard_sla2():
    b, h, n, d, bq, bk = SHAPES[0]
    q, k, v = random_qkv(b, h, n, d)
    mask = random_mask(b, h, ref.num_blocks(n, bq), ref.num_blocks(n, bk))
    alpha = torch.rand(b, h, mask.shape[2], dtype=torch.float64)
    hard = ref.sla2_attention(q, k, v, mask, alpha, bq, bk)
    logits = torch.full(mask.shape, float("-inf"), dtype=torch.float64).masked_fill(mask, float("inf"))
    soft = ref.sla2_attention_soft(q, k, v, logits, alpha, bq, bk)
    torch.testing.assert_close(soft, hard, rtol=1e-10, atol=1e-12)


def test_identity_router_ranks_blocks_like_sla_heuristic():
    """SLA ranks key blocks by softmax(Q̄ K̄ᵀ/√d) of unsmoothed pooled K; smoothing and softmax keep the order."""
    b, h, n, d, bq, bk = 2, 3, 100, 16, 16, 8
    q, k, _ = random_qkv(b, h, n, d)
    k = k + torch.randn(1, h, 1, d, dtype=torch.float64) * 3  # a large shared key offset, as real K has
    eye = torch.eye(d, dtype=torch.float64).expand(h, d, d)
    ours = ref.router_scores(q, k, eye, eye, bq, bk)
    sla = torch.softmax(ref.mean_pool(q, bq) @ ref.mean_pool(k, bk).transpose(-1, -2) / math.sqrt(d), -1)
    kk = ref.topk_count(ours.shape[-1], 0.7)
    assert torch.equal(ref.hard_topk(ours, kk).indices, ref.hard_topk(sla, kk).indices)


def test_topk_count_bounds():
    assert ref.topk_count(512, 0.97) == 15
    assert ref.topk_count(10, 0.999) == 1
    assert ref.topk_count(10, 0.0) == 10
    with pytest.raises(ValueError, match="sparsity"):
        ref.topk_count(10, 1.0)


def test_hard_topk_indices_sorted_and_match_mask():
    scores = torch.randn(2, 3, 5, 11)
    sel = ref.hard_topk(scores, 4)
    assert (sel.indices.diff(dim=-1) > 0).all()
    assert sel.mask.sum(-1).eq(4).all()
    assert torch.equal(torch.gather(sel.mask, -1, sel.indices), torch.ones_like(sel.indices, dtype=torch.bool))
    kth = scores.topk(4, -1).values[..., -1:]
    assert (torch.where(sel.mask, scores, float("inf")) >= kth).all()


def test_sla_baseline_formula():
    b, h, n, d, bq, bk = SHAPES[0]
    q, k, v = random_qkv(b, h, n, d)
    mask = random_mask(b, h, ref.num_blocks(n, bq), ref.num_blocks(n, bk))
    proj = torch.randn(h, d, d, dtype=torch.float64)
    out = ref.sla_attention(q, k, v, mask, proj, bq, bk)
    o_s, _ = ref.sparse_attention(q, k, v, mask, bq, bk)
    o_l = ref.linear_attention_complement(q, k, v, mask, bq, bk)
    torch.testing.assert_close(out, o_s + torch.einsum("bhnd,hde->bhne", o_l, proj))
    # the complement-linear branch against the dense weighted form
    tok = ref.expand_block_mask(mask, n, n, bq, bk)
    torch.testing.assert_close(o_l, ref.weighted_linear_attention(q, k, v, (~tok).double()))
