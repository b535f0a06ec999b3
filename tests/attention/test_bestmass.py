"""selection="bestmass": the oracle that gives each query block the key blocks holding the most true softmax
mass, against a direct dense computation, through both of the module's paths (the ops and the reference)."""

import pytest
import torch

from sla2_train.attention import SLA2Attention
from sla2_train.attention import reference as ref

H, D = 2, 16


def _dense_block_mass(q, k, block_q, block_k):
    """[B, H, nq, nk] from the whole softmax, block by block with explicit loops over blocks."""
    p = torch.softmax(q @ k.transpose(-1, -2) / D ** 0.5, dim=-1)
    n = q.shape[-2]
    nq, nk = ref.num_blocks(n, block_q), ref.num_blocks(n, block_k)
    out = torch.zeros(*q.shape[:2], nq, nk, dtype=p.dtype)
    for i in range(nq):
        rows = p[:, :, i * block_q:(i + 1) * block_q]
        for j in range(nk):
            out[:, :, i, j] = rows[..., j * block_k:(j + 1) * block_k].sum(-1).mean(-1)
    return out


@pytest.mark.parametrize("n,block_q,block_k,k_sel,rows",
                         [(64, 16, 8, 2, 16), (77, 16, 8, 3, 32), (45, 32, 16, 1, 1024)])
def test_selection_and_kept_mass_match_the_dense_block_mass(n, block_q, block_k, k_sel, rows):
    g = torch.Generator().manual_seed(n)
    q, k = (torch.randn(2, H, n, D, generator=g, dtype=torch.float64) for _ in range(2))
    mass = _dense_block_mass(q, k, block_q, block_k)
    chosen, kept = ref.bestmass_selection(q, k, block_q, block_k, k_sel, rows=rows)
    expected = mass.topk(k_sel, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(chosen.indices, expected)
    torch.testing.assert_close(kept, mass.gather(-1, expected).sum(-1))
    assert chosen.mask.sum(-1).eq(k_sel).all()


@pytest.mark.parametrize("alpha_mode", ["per_head", "predicted"])
@pytest.mark.parametrize("quant", [False, True])
def test_module_runs_sla2_on_the_oracle_mask_on_both_paths(alpha_mode, quant):
    n, block_q, block_k, sparsity = 70, 16, 8, 0.75
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, n, H, D, generator=g) for _ in range(3))
    ops = SLA2Attention(H, D, sparsity=sparsity, block_q=block_q, block_k=block_k, alpha_mode=alpha_mode,
                        alpha_init=0.6, quant=quant, selection="bestmass")
    plain = SLA2Attention(H, D, sparsity=sparsity, block_q=block_q, block_k=block_k, alpha_mode=alpha_mode,
                          alpha_init=0.6, quant=quant, selection="bestmass", backend="reference")
    plain.load_state_dict(ops.state_dict())
    with torch.no_grad():
        out_ops, out_ref = ops(q, k, v), plain(q, k, v)
        qb, kb, vb = (t.transpose(1, 2) for t in (q, k, v))
        k_sel = ref.topk_count(ref.num_blocks(n, block_k), sparsity)
        chosen, kept = ref.bestmass_selection(qb, kb, block_q, block_k, k_sel)
        alpha = ops.alpha(kept if alpha_mode == "predicted" else None)
        expect = ref.sla2_attention(qb, kb, vb, chosen.mask, alpha, block_q, block_k, quant).transpose(1, 2)
    torch.testing.assert_close(out_ref, expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_ops, expect, rtol=1e-4, atol=1e-4)


def test_the_oracle_keeps_at_least_the_routers_mass_and_differs_from_it():
    n, block_q, block_k, k_sel = 128, 16, 8, 2
    g = torch.Generator().manual_seed(5)
    q, k = (torch.randn(1, H, n, D, generator=g) * 2 for _ in range(2))
    mass = _dense_block_mass(q.double(), k.double(), block_q, block_k).float()
    router = ref.hard_topk(ref.router_scores(q, k, torch.eye(D).expand(H, D, D), torch.eye(D).expand(H, D, D),
                                             block_q, block_k), k_sel).mask
    chosen, kept = ref.bestmass_selection(q, k, block_q, block_k, k_sel)
    router_kept = (mass * router).sum(-1)
    assert (kept >= router_kept - 1e-6).all() and (kept > router_kept + 1e-3).any()


@pytest.mark.parametrize("kwargs,match", [
    ({"selection": "oracle"}, "unknown selection"),
    ({"selection": "bestmass", "variant": "sla"}, "is an SLA2 option"),
])
def test_bad_selection(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SLA2Attention(H, D, **kwargs)


def test_soft_topk_refuses_the_oracle():
    attn = SLA2Attention(H, D, sparsity=0.5, block_q=16, block_k=8, topk="soft", selection="bestmass")
    q = torch.randn(1, 32, H, D)
    with pytest.raises(ValueError, match="needs topk='hard'"):
        attn(q, q, q)


@pytest.mark.gpu
@pytest.mark.parametrize("quant", [False, True])
def test_the_kernels_run_the_oracles_blocks(quant):
    """At the testbed's shape (N = 8,704, 2 heads of 128) in bf16 on CUDA: the module's kernel path on the
    oracle's blocks against the float32 reference on the same blocks."""
    n, heads, dim, block_q, block_k = 8704, 2, 128, 128, 64
    g = torch.Generator(device="cuda").manual_seed(7)
    q, k, v = (torch.randn(1, n, heads, dim, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    attn = SLA2Attention(heads, dim, sparsity=0.97, block_q=block_q, block_k=block_k, alpha_init=0.6, quant=quant,
                         selection="bestmass").cuda()
    with torch.no_grad():
        out = attn(q, k, v)
        qb, kb, vb = (t.transpose(1, 2).float() for t in (q, k, v))
        chosen, _ = attn.bestmass(qb, kb, ref.topk_count(ref.num_blocks(n, block_k), 0.97))
        expect = ref.sla2_attention(qb, kb, vb, chosen.mask, attn.alpha(None).float(), block_q, block_k, quant)
    err = float((out.transpose(1, 2).float() - expect).abs().sum() / expect.abs().sum())
    assert err < (3e-2 if quant else 1e-2), err
