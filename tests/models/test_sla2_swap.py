"""The SLA2 processor on Wan's self-attention: exact replication of diffusers, and SLA2's all-blocks limit."""

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from hydra.utils import instantiate

from sla2_train.attention.reference import full_attention
from sla2_train.models import (
    ConfigError,
    KeepDense,
    SLA2Swap,
    SLA2WanProcessor,
    dense_attention,
    dense_capture,
    sla2_processors,
    with_attention,
)


def sla2(cfg, **options):
    kw = dict(sparsity=0.95, block_q=cfg.model.attn_block_q, block_k=cfg.model.attn_block_k)
    return SLA2Swap(**{**kw, **options})


def randomise_alpha(model):
    """α away from its init, so a test cannot pass just because α happens to be 1-ish."""
    for proc in sla2_processors(model):
        with torch.no_grad():
            for p in proc.attention.alpha_parameters():
                p.copy_(torch.randn_like(p))


def test_sla2_goes_on_every_self_attention_and_no_cross_attention(tiny_cfg, tiny_model):
    with_attention(tiny_model, sla2(tiny_cfg), tiny_cfg.model.latent_shape)
    for block in tiny_model.blocks:
        assert isinstance(block.attn1.processor, SLA2WanProcessor)
        assert isinstance(block.attn2.processor, WanAttnProcessor)
    assert len(sla2_processors(tiny_model)) == tiny_cfg.model.transformer.arch.num_layers


def test_dense_mode_is_bit_identical_to_stock_wan(tiny_cfg, tiny_model, make_inputs):
    x, t, text = make_inputs(tiny_cfg)
    with torch.no_grad():
        stock = tiny_model(x, t, text).sample
        with_attention(tiny_model, sla2(tiny_cfg), tiny_cfg.model.latent_shape)
        with dense_attention(tiny_model):
            ours = tiny_model(x, t, text).sample
        sparse = tiny_model(x, t, text).sample
    assert torch.equal(ours, stock)
    assert not torch.allclose(sparse, stock)  # 95% sparsity really changes the attention


def test_selecting_every_block_matches_the_dense_model_float64(tiny_cfg, tiny_model, make_inputs):
    # 12 key blocks of 16 (N=189): round(0.01·12) = 0 skipped, so Top-k keeps all of them.
    model = with_attention(tiny_model.double(), sla2(tiny_cfg, sparsity=0.01), tiny_cfg.model.latent_shape)
    randomise_alpha(model)
    x, t, text = make_inputs(tiny_cfg, dtype=torch.float64)
    with torch.no_grad():
        with dense_capture(model) as procs:
            dense = model(x, t, text).sample
            captured = [(p.attention, p.captured) for p in procs]
        sparse = model(x, t, text).sample
        for attention, (q, k, v) in captured:
            exact = full_attention(*(a.transpose(1, 2) for a in (q, k, v))).transpose(1, 2)
            torch.testing.assert_close(attention(q, k, v, layout="bnhd"), exact, rtol=1e-10, atol=1e-12)
    # Wan's LayerNorms run in float32 whatever the model dtype, so end to end the match is float32-tight.
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)


def test_captured_qkv_reproduce_the_layer_output(tiny_cfg, tiny_model, make_inputs):
    model = with_attention(tiny_model, sla2(tiny_cfg), tiny_cfg.model.latent_shape)
    outputs = {}
    hooks = [
        b.attn1.register_forward_hook(lambda m, args, out, i=i: outputs.__setitem__(i, out))
        for i, b in enumerate(model.blocks)
    ]
    x, t, text = make_inputs(tiny_cfg)
    with torch.no_grad(), dense_capture(model) as procs:
        model(x, t, text)
        for i, (block, proc) in enumerate(zip(model.blocks, procs)):
            q, k, v = proc.captured
            b, n = x.shape[0], q.shape[1]
            assert q.shape == (b, n, block.attn1.heads, block.attn1.inner_dim // block.attn1.heads)
            o = F.scaled_dot_product_attention(*(a.transpose(1, 2) for a in (q, k, v))).transpose(1, 2)
            out = block.attn1.to_out[0](o.flatten(2, 3))
            torch.testing.assert_close(out, outputs[i], rtol=1e-5, atol=1e-6)
    for h in hooks:
        h.remove()
    assert all(p.captured is None and not p.dense for p in sla2_processors(model))


def test_capture_of_chosen_layers_only(tiny_cfg, tiny_model, make_inputs):
    model = with_attention(tiny_model, sla2(tiny_cfg), tiny_cfg.model.latent_shape)
    with torch.no_grad(), dense_capture(model, layers=[1]) as procs:
        model(*make_inputs(tiny_cfg))
        assert len(procs) == 1 and procs[0] is sla2_processors(model)[1]
        assert procs[0].captured is not None and sla2_processors(model)[0].captured is None


def test_sla2_parameters_save_and_load_with_the_model(tiny_cfg, tiny_model, make_inputs):
    model = with_attention(tiny_model, sla2(tiny_cfg), tiny_cfg.model.latent_shape)
    randomise_alpha(model)
    with torch.no_grad():
        for p in sla2_processors(model)[0].attention.router_parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = model.state_dict()
    assert any(".attn1.processor.attention.router." in k for k in state)
    assert not any(".attn2.processor" in k for k in state)
    fresh = with_attention(instantiate(tiny_cfg.model.transformer), sla2(tiny_cfg), tiny_cfg.model.latent_shape)
    fresh.load_state_dict(state, strict=True)
    x, t, text = make_inputs(tiny_cfg)
    with torch.no_grad():
        assert torch.equal(model(x, t, text).sample, fresh(x, t, text).sample)


def test_keep_dense_leaves_diffusers_processors(tiny_cfg, tiny_model):
    model = with_attention(tiny_model, KeepDense(), tiny_cfg.model.latent_shape)
    assert all(isinstance(b.attn1.processor, WanAttnProcessor) for b in model.blocks)
    assert sla2_processors(model) == []


def test_processor_refuses_cross_attention(tiny_cfg, tiny_model):
    with_attention(tiny_model, sla2(tiny_cfg), tiny_cfg.model.latent_shape)
    proc = tiny_model.blocks[0].attn1.processor
    hidden = torch.randn(1, 189, tiny_model.blocks[0].attn1.inner_dim)
    with pytest.raises(ValueError, match="self-attention"):
        proc(tiny_model.blocks[0].attn2, hidden, torch.randn(1, 16, hidden.shape[-1]))


@pytest.mark.parametrize(
    "options, match",
    [({"sparsity": 1.5}, "sparsity must be in \\(0, 1\\)"), ({"block_k": 24}, "power of two"), ({"bogus": 1}, "bogus")],
)
def test_bad_attention_options_are_one_clear_error(tiny_cfg, tiny_model, options, match):
    with pytest.raises(ConfigError, match=match) as err:
        with_attention(tiny_model, sla2(tiny_cfg, **options), tiny_cfg.model.latent_shape)
    assert str(err.value).startswith("attention: ") and "\n" not in str(err.value)
