"""The fake-quant low-bit sparse branch: per-element rounding bounds, overall error, straight-through, and
the running-maximum (SageAttention2) rounding of P̃ against a loop written here as the kernel runs it."""

import math

import pytest
import torch

from sla2_train.attention import reference as ref


def test_int8_block_rounding_bound():
    x = torch.randn(2, 3, 45, 16, dtype=torch.float64) * 4
    x_hat, scale = ref.quantize_int8_blocks(x, 16)
    assert x_hat.abs().max() <= 127 and torch.equal(x_hat, x_hat.round())
    per_tok = scale.repeat_interleave(16, -1)[..., :45, None]
    assert ((x - x_hat * per_tok).abs() <= per_tok / 2 + 1e-12).all()
    # the largest element of each block, the ragged last one too, lands exactly on ±127
    for start in (0, 16, 32):
        assert (x_hat[:, :, start : start + 16].abs().amax(dim=(-1, -2)) == 127).all()


def test_fp8_e4m3_rounding_bound():
    x = torch.randn(4096, dtype=torch.float64) * 50
    y = ref.round_to_fp8_e4m3(x)
    normal = x.abs() >= 2.0**-6  # e4m3 normal range: 3 mantissa bits, relative half-ulp 2^-4
    assert ((y - x).abs()[normal] <= x.abs()[normal] * 2.0**-4).all()
    assert ((y - x).abs()[~normal] <= 2.0**-10).all()  # subnormal spacing 2^-9
    big = torch.tensor([1e4, -1e4], dtype=torch.float64)
    assert torch.equal(ref.round_to_fp8_e4m3(big), torch.tensor([448.0, -448.0], dtype=torch.float64))


def test_low_bit_sparse_branch_error_bound():
    """Stated bound (docs/method.md, Low-bit sparse branch and QAT; D = 64): relative L1 ≤ 5e-2 and cosine ≥ 0.998
    against exact."""
    b, h, n, d, bq, bk = 1, 4, 300, 64, 64, 32
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64) for _ in range(3))
    k = k + 2.0  # a shared key offset: smoothing must remove it before INT8 or the error would grow
    scores = ref.router_scores(q, k, *(torch.eye(d, dtype=torch.float64).expand(h, d, d),) * 2, bq, bk)
    mask = ref.hard_topk(scores, 4).mask
    exact, lse = ref.sparse_attention(q, k, v, mask, bq, bk)
    approx, lse_q = ref.fake_quant_sparse_attention(q, k, v, mask, bq, bk)
    rel_l1 = (approx - exact).abs().sum() / exact.abs().sum()
    cos = torch.nn.functional.cosine_similarity(approx.flatten(), exact.flatten(), dim=0)
    assert rel_l1 <= 5e-2 and cos >= 0.998, (rel_l1.item(), cos.item())
    assert rel_l1 > 1e-4  # it really is quantised
    assert (lse_q - lse).abs().max() < 0.1


def test_quant_backward_is_straight_through():
    b, h, n, d, bq, bk = 1, 2, 45, 8, 16, 8
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.rand(b, h, 3, 6) < 0.5
    mask[..., 0] = True
    alpha = torch.full((b, h, 3), 0.8, dtype=torch.float64, requires_grad=True)
    dout = torch.randn(b, h, n, d, dtype=torch.float64)
    grads = {}
    outs = {}
    for quant in (False, True):
        out = ref.sla2_attention(q, k, v, mask, alpha, bq, bk, quant=quant)
        outs[quant] = out.detach()
        grads[quant] = torch.autograd.grad((out * dout).sum(), (q, k, v))
    assert not torch.allclose(outs[True], outs[False])
    for g_quant, g_exact in zip(grads[True], grads[False]):
        torch.testing.assert_close(g_quant, g_exact, rtol=1e-12, atol=1e-12)


def online_fake_quant(q, k, v, mask, bq, bk):
    """The running-max arithmetic written independently, as the one-pass kernel runs it: per query block, the
    selected key blocks one at a time in ascending order; P̃_j = exp(S_j − m_j) rounded to e4m3 at scale 448,
    accumulator and row sum rescaled by exp(m_{j−1} − m_j). Only the INT8/e4m3 rounding helpers are shared."""
    b, h, n, d = q.shape
    q_hat, s_q = ref.quantize_int8_blocks(q, bq)
    k_hat, s_k = ref.quantize_int8_blocks(k - k.mean(dim=-2, keepdim=True), bk)
    s_v = v.abs().amax(dim=-2) / 448  # [B, H, D]
    v_hat = ref.round_to_fp8_e4m3(v / s_v[:, :, None])
    o, lse = torch.empty_like(q), torch.empty(b, h, n, dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            for i in range(mask.shape[2]):
                rows = slice(i * bq, min((i + 1) * bq, n))
                m = torch.full((rows.stop - rows.start,), float("-inf"), dtype=q.dtype)
                l, acc = torch.zeros_like(m), torch.zeros(m.numel(), d, dtype=q.dtype)
                for j in torch.nonzero(mask[bi, hi, i]).flatten().tolist():  # ascending
                    cols = slice(j * bk, min((j + 1) * bk, n))
                    s = (q_hat[bi, hi, rows] @ k_hat[bi, hi, cols].T) * (s_q[bi, hi, i] * s_k[bi, hi, j]) / math.sqrt(d)
                    m_new = torch.maximum(m, s.amax(dim=-1))
                    p = torch.exp(s - m_new[:, None])
                    corr = torch.exp(m - m_new)
                    l = l * corr + p.sum(dim=-1)
                    acc = acc * corr[:, None] + (ref.round_to_fp8_e4m3(p * 448) / 448) @ v_hat[bi, hi, cols]
                    m = m_new
                o[bi, hi, rows] = acc * s_v[bi, hi] / l[:, None]
                shift = q[bi, hi, rows] @ k[bi, hi].mean(dim=0) / math.sqrt(d)
                lse[bi, hi, rows] = m + torch.log(l) + shift
    return o, lse


def ramp_qkv(b, h, n, d, bk, slope, seed):
    """Random q, k, v (float64) whose scores gain `slope` per key block: q·e0 = 1 for every query and k·e0
    grows by slope·√D per key block, so the row maximum sits in the first selected block for a steep
    negative slope and moves to later blocks for a positive one."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(3))
    q[..., 0] = 1.0
    k[..., 0] = slope * math.sqrt(d) * (torch.arange(n, dtype=torch.float64) // bk)
    return q, k, v


def rel_l1(a, b):
    return float((a - b).abs().sum() / b.abs().sum())


@pytest.mark.parametrize("shape", [(2, 2, 45, 16, 16, 8), (1, 3, 37, 8, 8, 16)])
def test_running_max_equals_an_online_loop(shape):
    """The vectorised running-max rounding is the kernel's loop (ragged N; several selections, including
    query blocks whose first selected key block is not block 0)."""
    b, h, n, d, bq, bk = shape
    nq, nk = ref.num_blocks(n, bq), ref.num_blocks(n, bk)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) * 1.5 for _ in range(3))
        mask = torch.rand(b, h, nq, nk, generator=g) < 0.5
        mask[..., -1] |= ~mask.any(dim=-1)  # every query block keeps one block
        assert (~mask[..., 0]).any() and mask[..., 1:].any()
        o, lse = ref.fake_quant_sparse_attention(q, k, v, mask, bq, bk)
        o_loop, lse_loop = online_fake_quant(q, k, v, mask, bq, bk)
        torch.testing.assert_close(o, o_loop, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse, lse_loop, rtol=1e-12, atol=1e-12)
        # and the rounding differs from the final-max one: the test above is not trivially met by either
        assert rel_l1(ref.fake_quant_sparse_attention(q, k, v, mask, bq, bk, running_max=False)[0], o) > 5e-4


def test_running_max_is_the_final_max_when_the_first_block_holds_it():
    """Scores falling by 4 per key block: every row's maximum is in its first selected block, so the running
    maximum is the final one over every selected column and both roundings give the same numbers exactly."""
    b, h, n, d, bq, bk = 1, 2, 45, 16, 16, 8
    q, k, v = ramp_qkv(b, h, n, d, bk, slope=-4.0, seed=0)
    mask = torch.rand(b, h, 3, 6, generator=torch.Generator().manual_seed(1)) < 0.6
    mask[..., 2] = True
    mask[0, 0, 0, :2] = False  # a query block starting at key block 2
    s = ref.quantised_scores(q, k, bq, bk).masked_fill(~ref.expand_block_mask(mask, n, n, bq, bk), float("-inf"))
    first = mask.long().argmax(dim=-1)  # [B, H, nq]: first selected key block
    first_tok = ref.expand_query_blocks(first, n, bq)[..., 0]  # [B, H, N]
    in_first = (torch.arange(n) // bk) == first_tok[..., None]  # [B, H, N, N]
    assert torch.equal(s.masked_fill(~in_first, float("-inf")).amax(dim=-1), s.amax(dim=-1))  # the premise
    o_run, lse_run = ref.fake_quant_sparse_attention(q, k, v, mask, bq, bk)
    o_fin, lse_fin = ref.fake_quant_sparse_attention(q, k, v, mask, bq, bk, running_max=False)
    assert torch.equal(o_run, o_fin) and torch.equal(lse_run, lse_fin)


def test_running_max_differs_when_a_later_block_holds_the_max():
    """Scores rising by 1 a key block: the maximum moves at every selected block, earlier blocks' P̃ are rounded
    against smaller maxima; the outputs differ by far more than float noise, the lse not at all (same m, l)."""
    b, h, n, d, bq, bk = 1, 2, 45, 16, 16, 8
    q, k, v = ramp_qkv(b, h, n, d, bk, slope=1.0, seed=0)
    mask = torch.ones(b, h, 3, 6, dtype=torch.bool)
    o_run, lse_run = ref.fake_quant_sparse_attention(q, k, v, mask, bq, bk)
    o_fin, lse_fin = ref.fake_quant_sparse_attention(q, k, v, mask, bq, bk, running_max=False)
    assert rel_l1(o_run, o_fin) > 2e-3
    torch.testing.assert_close(lse_run, lse_fin, rtol=0, atol=1e-12)
    # both are still the low-bit approximation of the same attention
    exact, _ = ref.sparse_attention(q, k, v, mask, bq, bk)
    assert rel_l1(o_run, exact) < 5e-2 and rel_l1(o_fin, exact) < 5e-2


def test_running_max_has_no_nan_before_the_first_selected_block():
    """Columns before a row's first selected block have running max −inf (−inf − (−inf) would be NaN): output,
    lse and the gradient through the fake-quant arithmetic stay finite."""
    b, h, n, d, bq, bk = 1, 2, 45, 8, 16, 8
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.zeros(b, h, 3, 6, dtype=torch.bool)
    mask[..., 0, 3] = mask[..., 1, 5] = True  # first selected block 3, and the ragged last one alone
    mask[..., 2, 1:4] = True
    o, lse = ref.fake_quant_sparse_attention(q, k, v, mask, bq, bk)
    assert torch.isfinite(o).all() and torch.isfinite(lse).all()
    grads = torch.autograd.grad((o.sum() + lse.sum()), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
