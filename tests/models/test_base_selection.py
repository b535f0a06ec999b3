"""attention.selection=base: the blocks of every layer come from the frozen base model's dense q, k, through the
layer's own router, whatever the model's weights have become since; the copy stays out of the module tree."""

import pytest
import torch

from sla2_train.attention import SLA2Attention
from sla2_train.attention import reference as ref
from sla2_train.models import SLA2Swap, capture_qkv, sla2_processors, with_attention
from sla2_train.models.base_selection import BASE_SELECTION


def swap(cfg, **options):
    kw = dict(sparsity=0.75, block_q=cfg.model.attn_block_q, block_k=cfg.model.attn_block_k)
    return SLA2Swap(**{**kw, **options})


def router_blocks(layer, q, k):
    """The layer's hard Top-k on q, k [B, N, H, D], from the reference router (not the op the hook calls)."""
    qb, kb = q.transpose(1, 2).float(), k.transpose(1, 2).float()
    scores = ref.router_scores(qb, kb, layer.router.proj_q, layer.router.proj_k, layer.block_q, layer.block_k)
    return ref.hard_topk(scores, ref.topk_count(scores.shape[-1], layer.sparsity)).indices


def dense_qk(model, inputs):
    with torch.no_grad(), capture_qkv(model, dense=True) as procs:
        model(*inputs)
        return [p.captured[:2] for p in procs]


def perturb(module, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.abs().mean().clamp_min(1e-3))


def test_blocks_follow_the_base_model_through_the_layers_router_and_not_the_fine_tune(tiny_cfg, tiny_model,
                                                                                       make_inputs):
    inputs = make_inputs(tiny_cfg)
    base_qk = dense_qk(with_attention(tiny_model, swap(tiny_cfg), tiny_cfg.model.latent_shape), inputs)
    model = with_attention(tiny_model, swap(tiny_cfg, selection="base"), tiny_cfg.model.latent_shape)
    layers = [p.attention for p in sla2_processors(model)]
    for layer in layers:  # a learned router: the blocks are its choice on the base's q, k
        perturb(layer.router, scale=3.0, seed=1)
    # "fine-tune" the DiT (everything but routers and α): its own dense q, k now differ from the base's
    perturb(model.blocks[0].attn1.to_q, seed=2)
    perturb(model.blocks[0].attn1.to_k, seed=3)
    moved_qk = dense_qk(model, inputs)
    assert not torch.allclose(moved_qk[0][0], base_qk[0][0])
    with torch.no_grad():
        model(*inputs)
    for layer, (q, k) in zip(layers, base_qk):
        assert torch.equal(layer.given.long(), router_blocks(layer, q, k))
    # on the fine-tuned model's own q, k the same router picks other blocks somewhere: the test can tell them apart
    assert any(not torch.equal(router_blocks(layer, *qk), layer.given.long()) for layer, qk in zip(layers, moved_qk))


def test_the_copy_is_neither_saved_nor_trained_and_follows_the_model_to_its_dtype(tiny_cfg, tiny_model,
                                                                                 make_inputs):
    inputs = make_inputs(tiny_cfg)
    routed = set(with_attention(type(tiny_model).from_config(tiny_model.config), swap(tiny_cfg),
                                tiny_cfg.model.latent_shape).state_dict())
    model = with_attention(tiny_model, swap(tiny_cfg, selection="base"), tiny_cfg.model.latent_shape)
    selection = getattr(model, BASE_SELECTION)
    assert set(model.state_dict()) == routed
    assert not any(p is q for p in model.parameters() for q in selection.base.parameters())
    model(*inputs).sample.square().mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in selection.base.parameters())
    assert model.blocks[0].attn1.to_q.weight.grad is not None and selection.calls == 1
    model.double()
    with torch.no_grad():
        model(*(t.double() for t in inputs))
    assert next(selection.base.parameters()).dtype == torch.float64 and selection.calls == 2
