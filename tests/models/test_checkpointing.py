"""keep_attention checkpointing: same gradients as whole-block recompute, without re-running SLA2's forward."""

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from sla2_train.attention.reference import indexed
from sla2_train.models import ConfigError, set_attention_mode


def build(compose_config, mode, seed):
    cfg = compose_config("model=tiny", "logger=none", f"model.transformer.gradient_checkpointing={mode}")
    torch.manual_seed(seed)
    model = instantiate(cfg.module.model)
    set_attention_mode(model, topk="hard", quant=True)  # stage 2's path: the custom ops
    return model.train(), cfg


def step(model, inputs, monkeypatch):
    calls = {"n": 0}
    real = indexed.indexed_forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(indexed, "indexed_forward", counted)
    out = model(*inputs, return_dict=False)[0]
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return calls["n"], grads


@pytest.mark.parametrize("mode", ["full", "keep_attention"])
def test_gradients_equal_no_checkpointing(compose_config, make_inputs, monkeypatch, mode):
    seed = int(torch.randint(2**31, ()))
    plain, cfg = build(compose_config, "none", seed)
    ckpt, _ = build(compose_config, mode, seed)
    inputs = make_inputs(cfg)
    layers = len(plain.blocks)
    n_plain, g_plain = step(plain, inputs, monkeypatch)
    n_ckpt, g_ckpt = step(ckpt, inputs, monkeypatch)
    assert n_plain == layers
    # whole-block recompute runs every layer's attention twice; keep_attention reuses the saved outputs
    assert n_ckpt == (2 * layers if mode == "full" else layers)
    assert g_plain.keys() == g_ckpt.keys() and len(g_plain) > 0
    for name, g in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_unknown_mode_is_one_line(compose_config):
    with pytest.raises(InstantiationException) as err:  # train.py's config_errors_as_one_line unwraps it
        build(compose_config, "some", 0)
    assert isinstance(err.value.__cause__, ConfigError)
    assert "gradient_checkpointing: unknown mode 'some'" in str(err.value.__cause__)
