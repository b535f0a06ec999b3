"""selection="base": the layer runs SLA2 on the blocks written into `given` (models/base_selection.py writes the
frozen base model's), through both of the module's paths (the ops and the reference), against a direct call."""

import pytest
import torch

from sla2_train.attention import SLA2Attention
from sla2_train.attention import reference as ref

H, D = 2, 16


@pytest.mark.parametrize("alpha_mode", ["per_head", "predicted"])
@pytest.mark.parametrize("quant", [False, True])
@pytest.mark.parametrize("n,block_q,block_k,sparsity", [(70, 16, 8, 0.75), (128, 32, 16, 0.5)])
def test_module_runs_sla2_on_the_given_blocks_on_both_paths(alpha_mode, quant, n, block_q, block_k, sparsity):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, n, H, D, generator=g) for _ in range(3))
    kw = dict(sparsity=sparsity, block_q=block_q, block_k=block_k, alpha_mode=alpha_mode, alpha_init=0.6,
              quant=quant, selection="base")
    ops, plain = SLA2Attention(H, D, **kw), SLA2Attention(H, D, backend="reference", **kw)
    with torch.no_grad():
        ops.router.proj_q.add_(torch.randn(H, D, D, generator=g))
    plain.load_state_dict(ops.state_dict())
    nq, nk = ref.num_blocks(n, block_q), ref.num_blocks(n, block_k)
    k_sel = ref.topk_count(nk, sparsity)
    # random blocks, unrelated to what the router would pick
    given = torch.rand(2, H, nq, nk, generator=g).argsort(-1)[..., :k_sel].sort(-1).values.to(torch.int32)
    ops.given = plain.given = given
    with torch.no_grad():
        out_ops, out_ref = ops(q, k, v), plain(q, k, v)
        qb, kb, vb = (t.transpose(1, 2) for t in (q, k, v))
        mask = ref.indexed.index_mask(given, nk)
        scores = ref.router_scores(qb, kb, ops.router.proj_q, ops.router.proj_k, block_q, block_k)
        routed = ref.hard_topk(scores, k_sel).mask
        assert not torch.equal(mask, routed)
        mass = ref.selected_mass(scores, mask, ref.block_token_counts(n, block_k, q.device))
        alpha = ops.alpha(mass if alpha_mode == "predicted" else None)
        expect = ref.sla2_attention(qb, kb, vb, mask, alpha, block_q, block_k, quant).transpose(1, 2)
    torch.testing.assert_close(out_ref, expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_ops, expect, rtol=1e-4, atol=1e-4)


def test_the_given_blocks_carry_gradients_to_q_k_v_and_alpha_not_the_router():
    n, block_q, block_k = 64, 16, 16
    layer = SLA2Attention(H, D, sparsity=0.5, block_q=block_q, block_k=block_k, selection="base")
    q, k, v = (torch.randn(1, n, H, D, requires_grad=True) for _ in range(3))
    layer.given = torch.tensor([0, 3], dtype=torch.int32).expand(1, H, 4, 2)
    layer(q, k, v).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))
    assert all(p.grad is not None for p in layer.alpha_parameters())
    assert all(p.grad is None for p in layer.router_parameters())


def test_a_layer_with_no_base_blocks_says_so():
    layer = SLA2Attention(H, D, sparsity=0.5, block_q=16, block_k=16, selection="base")
    q = k = v = torch.randn(1, 64, H, D)
    with pytest.raises(RuntimeError, match="frozen base model, which did not run"):
        layer(q, k, v)
    layer.given = torch.zeros(1, H, 4, 1, dtype=torch.int32)  # k_sel is 2 of 4 key blocks, not 1
    with pytest.raises(RuntimeError, match=r"do not fit this call's \(1, 2, 4, 2\)"):
        layer(q, k, v)
