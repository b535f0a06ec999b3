"""attention.selection=base: the blocks of every layer come from the frozen base model's dense q, k, through the
layer's own router, whatever the model's weights have become since; the copy stays out of the module tree."""

import pytest
import torch
from torch import nn

from sla2_train.attention import reference as ref
from sla2_train.evaluation.precision import cast_keeping_fp32
from sla2_train.models import SLA2Swap, capture_qkv, dense_attention, sla2_processors, with_attention
from sla2_train.models.base_selection import BASE_SELECTION


def swap(cfg, **options):
    kw = dict(sparsity=0.75, block_q=cfg.model.attn_block_q, block_k=cfg.model.attn_block_k)
    return SLA2Swap(**{**kw, **options})


def reference_blocks(layer, q, k):
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


@pytest.mark.parametrize("backend", ["auto", "reference"])  # the router op, or the reference router
def test_blocks_follow_the_base_model_through_the_layers_router_and_not_the_fine_tune(tiny_cfg, tiny_model,
                                                                                       make_inputs, backend):
    inputs = make_inputs(tiny_cfg)
    base_qk = dense_qk(with_attention(tiny_model, swap(tiny_cfg), tiny_cfg.model.latent_shape), inputs)
    model = with_attention(tiny_model, swap(tiny_cfg, selection="base", backend=backend),
                           tiny_cfg.model.latent_shape)
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
        assert torch.equal(layer.given.long(), reference_blocks(layer, q, k))
    # on the fine-tuned model's own q, k the same router picks other blocks somewhere: the test can tell them apart
    assert any(not torch.equal(reference_blocks(layer, *qk), layer.given.long()) for layer, qk in zip(layers, moved_qk))


def test_the_copy_is_neither_saved_nor_trained_and_follows_the_model_to_its_dtypes(tiny_cfg, tiny_model,
                                                                                  make_inputs):
    inputs = make_inputs(tiny_cfg)
    routed = set(with_attention(type(tiny_model).from_config(tiny_model.config), swap(tiny_cfg),
                                tiny_cfg.model.latent_shape).state_dict())
    model = with_attention(tiny_model, swap(tiny_cfg, selection="base"), tiny_cfg.model.latent_shape)
    selection = getattr(model, BASE_SELECTION)
    assert set(model.state_dict()) == routed
    assert not any(p is q for p in model.parameters() for q in selection.base.parameters())
    layers = [p.attention for p in sla2_processors(model)]

    def forward_sets_blocks(*args):  # each forward clears the blocks, and the copy's run writes them again
        for layer in layers:
            layer.given = "stale"
        out = model(*args)
        assert all(isinstance(layer.given, torch.Tensor) for layer in layers)
        return out

    forward_sets_blocks(*inputs).sample.square().mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in selection.base.parameters())
    assert model.blocks[0].attn1.to_q.weight.grad is not None
    model.double()
    with torch.no_grad():
        forward_sets_blocks(*(t.double() for t in inputs))
        assert next(selection.base.parameters()).dtype == torch.float64
        # .double() made the rope buffers other tensors than those the copy was first paired with
        assert [t.dtype for _, t in selection.base.named_buffers()] == [t.dtype for _, t in model.named_buffers()]
        assert {t.dtype for _, t in model.named_buffers()} == {torch.float64}
        with dense_attention(model):  # a dense forward gets blocks too: eval's probe runs SLA2 on its q, k
            forward_sets_blocks(*(t.double() for t in inputs))
        # cast as eval casts for inference: bf16 with the `_keep_in_fp32_modules` in float32, tensor by tensor
        cast_keeping_fp32(model, torch.bfloat16)
        assert {t.dtype for t in model.parameters()} == {torch.bfloat16, torch.float32}
        forward_sets_blocks(*(t.to(torch.bfloat16) for t in inputs))
        own = dict(model.named_parameters())
        assert all(t.dtype == own[n].dtype for n, t in selection.base.named_parameters())


def test_the_copy_follows_through_the_wrappers_put_around_the_blocks_after_it_was_taken(tiny_cfg, tiny_model,
                                                                                        make_inputs):
    """FSDP (trainer=fsdp) and activation checkpointing wrap the blocks after SLA2Swap took the copy: the model's
    names gain a segment the copy's lack, and each of the copy's tensors must still find its twin's dtype."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model = with_attention(tiny_model, swap(tiny_cfg, selection="base"), tiny_cfg.model.latent_shape)
    model.blocks[0] = checkpoint_wrapper(model.blocks[0])
    assert any("_checkpoint_wrapped_module." in n for n, _ in model.named_parameters())
    cast_keeping_fp32(model, torch.bfloat16)
    with torch.no_grad():
        out = model(*(t.to(torch.bfloat16) for t in make_inputs(tiny_cfg))).sample
    assert torch.isfinite(out.float()).all()
    own = {n.replace("_checkpoint_wrapped_module.", ""): t for n, t in model.named_parameters()}
    base = getattr(model, BASE_SELECTION).base
    assert all(t.dtype == own[n].dtype for n, t in base.named_parameters())


def test_a_model_whose_names_the_copy_cannot_pair_with_is_refused_in_one_line(tiny_cfg, tiny_model, make_inputs):
    class Renaming(nn.Module):  # a wrapper whose segment is not one the copy reads through
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    model = with_attention(tiny_model, swap(tiny_cfg, selection="base"), tiny_cfg.model.latent_shape)
    model.blocks[0] = Renaming(model.blocks[0])
    with pytest.raises(RuntimeError, match=r"no longer has a tensor named 'blocks\.0\..*use_orig_params=true"):
        model(*make_inputs(tiny_cfg))


@pytest.mark.gpu
def test_on_cuda_in_bf16_the_copy_follows_the_model_and_the_kernels_router_picks_a_top_k(compose_config,
                                                                                        make_inputs):
    """Head dim 128 and blocks 128/64, so the router kernel runs (N = 1,536: 12 query and 24 key blocks)."""
    from hydra.utils import instantiate

    cfg = compose_config("model=tiny", "logger=none", "model.transformer.arch.attention_head_dim=128",
                         "model.attn_block_q=128", "model.attn_block_k=64", "model.latent_shape=[4,3,32,64]")
    model = with_attention(instantiate(cfg.model.transformer), swap(cfg, sparsity=0.75), cfg.model.latent_shape)
    inputs = [t.cuda().to(torch.bfloat16) for t in make_inputs(cfg)]
    base_qk = dense_qk(model.cuda().to(torch.bfloat16), inputs)
    model = with_attention(model.float().cpu(), swap(cfg, selection="base", sparsity=0.75), cfg.model.latent_shape)
    model = model.cuda().to(torch.bfloat16)
    selection = getattr(model, BASE_SELECTION)
    with torch.no_grad():
        out = model(*inputs).sample
    base = next(selection.base.parameters())
    assert (base.device.type, base.dtype) == ("cuda", torch.bfloat16) and torch.isfinite(out).all()
    for layer, (q, k) in zip([p.attention for p in sla2_processors(model)], base_qk):
        qb, kb = q.transpose(1, 2).float(), k.transpose(1, 2).float()
        scores = ref.router_scores(qb, kb, layer.router.proj_q.float(), layer.router.proj_k.float(), 128, 64)
        k_sel = ref.topk_count(scores.shape[-1], 0.75)
        kept = scores.gather(-1, layer.given.long()).sum(-1)
        best = scores.topk(k_sel, dim=-1).values.sum(-1)
        assert layer.given.shape == (2, 2, 12, k_sel)
        torch.testing.assert_close(kept, best, rtol=1e-3, atol=1e-3)  # a valid Top-k (ties may differ)
