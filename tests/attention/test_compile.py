"""torch.compile(fullgraph=True) through SLA2: the custom ops (sla2::router, sla2::attention and its backward)
trace without graph breaks, forward and backward, and compute what eager mode computes.

CPU: the ops' implementation is the reference, so this checks the tracing machinery (fake impls, autograd
registration) on the graph that runs on the GPU. aot_eager is used by default (dynamo + AOTAutograd, no code
generation: seconds); inductor is exercised on SLA2Attention in a slow-marked test and on the GPU.
"""

import pathlib

import pytest
import torch

from sla2_train.attention import SLA2Attention

TINY = pathlib.Path(__file__).resolve().parents[2] / "conf" / "model" / "tiny.yaml"


def _grads(module, inputs, out):
    return torch.autograd.grad(out.square().sum(), [*inputs, *[p for p in module.parameters() if p.requires_grad]],
                               allow_unused=True)


def _attention_case(device="cpu", dtype=torch.float32, d=16, n=189, bq=32, bk=16, quant=False):
    torch.manual_seed(0)
    attn = SLA2Attention(2, d, sparsity=0.5, block_q=bq, block_k=bk, alpha_mode="per_block", seq_len=n,
                         quant=quant).to(device)
    x = [torch.randn(2, n, 2, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
    return attn, x


@pytest.mark.parametrize("quant", [False, True])
def test_compiled_sla2_attention_matches_eager(quant):
    attn, x = _attention_case(quant=quant)
    eager = attn(*x)
    g_eager = _grads(attn, x, eager)
    compiled = torch.compile(attn, fullgraph=True, backend="aot_eager")
    out = compiled(*x)
    g = _grads(attn, x, out)
    torch.testing.assert_close(out, eager)
    for a, b in zip(g, g_eager):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_inductor_compiles_sla2_attention():
    attn, x = _attention_case()
    eager = attn(*x)
    out = torch.compile(attn, fullgraph=True)(*x)
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    _grads(attn, x, out)


def tiny_wan(head_dim=None, latent=None, block_q=None, block_k=None):
    """The `tiny` model preset (conf/model/tiny.yaml) with SLA2 on every self-attention layer."""
    from omegaconf import OmegaConf

    from sla2_train.models import wan_transformer
    from sla2_train.models.attention_swap import SLA2Swap

    cfg = OmegaConf.create({"model": OmegaConf.load(TINY)})
    arch = OmegaConf.to_container(cfg.model.transformer.arch, resolve=True)
    if head_dim:
        arch["attention_head_dim"] = head_dim
    latent = latent or list(cfg.model.latent_shape)
    torch.manual_seed(0)
    model = wan_transformer(arch)
    swap = SLA2Swap(sparsity=0.5, block_q=block_q or cfg.model.attn_block_q, block_k=block_k or cfg.model.attn_block_k)
    swap.apply(model, latent)
    inputs = dict(
        hidden_states=torch.randn(1, *latent),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, cfg.model.text_len, cfg.model.text_dim),
    )
    return model, inputs


def _wan_loss_and_grads(model, inputs):
    out = model(**inputs, return_dict=False)[0]
    loss = out.square().mean()
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


def test_compiled_tiny_wan_with_sla2_forward_and_backward():
    pytest.importorskip("diffusers")
    model, inputs = tiny_wan()
    loss_eager, g_eager = _wan_loss_and_grads(model, inputs)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss, g = _wan_loss_and_grads(compiled, inputs)
    torch.testing.assert_close(loss, loss_eager)
    alpha_grads = 0
    for (name, _), a, b in zip([(n, p) for n, p in model.named_parameters() if p.requires_grad], g, g_eager):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
            alpha_grads += "alpha" in name and a.abs().sum().item() > 0
    assert alpha_grads == len(model.blocks)  # the op's backward reached every layer's α


@pytest.mark.gpu
@pytest.mark.parametrize("quant", [False, True])
def test_compiled_kernels_gpu(quant):
    """H100: inductor, fullgraph, the Triton kernels behind the ops; a small Wan with head_dim 64."""
    attn, x = _attention_case("cuda", torch.bfloat16, d=128, n=4000, bq=128, bk=64, quant=quant)
    eager = attn(*x)
    g_eager = _grads(attn, x, eager)
    compiled = torch.compile(attn, fullgraph=True)
    out = compiled(*x)
    g = _grads(attn, x, out)
    torch.testing.assert_close(out, eager, rtol=2e-2, atol=2e-2)
    for a, b in zip(g, g_eager):
        if a is not None:
            assert (a.float() - b.float()).norm() <= 2e-2 * b.float().norm()
    pytest.importorskip("diffusers")
    from diffusers import WanTransformer3DModel

    from sla2_train.models.attention_swap import SLA2Swap

    torch.manual_seed(0)  # a small Wan2.1 architecture whose head_dim the kernels cover (omegaconf-free)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=4,
                                  out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    latent = [4, 3, 32, 32]  # N = 3·16·16 = 768 tokens
    SLA2Swap(sparsity=0.5, block_q=64, block_k=64).apply(model, latent)
    inputs = dict(hidden_states=torch.randn(1, *latent), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 16, 32))
    model = model.cuda().bfloat16()
    inputs = {k: v.cuda().to(torch.bfloat16 if v.is_floating_point() and k != "timestep" else v.dtype)
              for k, v in inputs.items()}
    loss, grads = _wan_loss_and_grads(torch.compile(model, fullgraph=True), inputs)
    assert torch.isfinite(loss) and all(g is None or torch.isfinite(g).all() for g in grads)
