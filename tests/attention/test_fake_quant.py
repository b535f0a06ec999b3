"""The fake-quant low-bit sparse branch: per-element rounding bounds, overall error, straight-through."""

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
    """Stated bound (SLA2.md §5 arithmetic, D = 64): relative L1 ≤ 5e-2 and cosine ≥ 0.998 against exact (issue 3)."""
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
