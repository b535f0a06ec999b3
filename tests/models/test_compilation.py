"""Regional compilation: same outputs and gradients as eager, the parameters keep their names, bad keys refused."""

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from sla2_train.models import ConfigError
from sla2_train.models.compilation import compiled_backend


def build(compose_config, seed, *overrides):
    cfg = compose_config("model=tiny", "logger=none", *overrides)
    torch.manual_seed(seed)
    return instantiate(cfg.module.model).train(), cfg


@pytest.mark.parametrize("attention", ["full", "sla2"])
def test_compiled_blocks_match_eager(compose_config, make_inputs, attention):
    seed = int(torch.randint(2**31, ()))
    eager, cfg = build(compose_config, seed, f"attention={attention}")
    # aot_eager traces forward and backward through dynamo and AOTAutograd without generating code: the
    # graph capture is what can go wrong here, and it runs on any CPU in seconds
    compiled, _ = build(compose_config, seed, f"attention={attention}", "model.transformer.compile=aot_eager")
    assert compiled_backend(compiled) == "aot_eager" and compiled_backend(eager) is None
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints and export see plain names
    inputs = make_inputs(cfg)
    outs = []
    for model in (eager, compiled):
        out = model(*inputs, return_dict=False)[0]
        out.square().mean().backward()
        outs.append((out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    assert outs[1][1].keys() == outs[0][1].keys() and outs[0][1]
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_unknown_backend_names_the_key(compose_config):
    with pytest.raises(InstantiationException, match=r"model\.transformer\.compile: unknown backend 'indcutor'"):
        build(compose_config, 0, "model.transformer.compile=indcutor")


@pytest.mark.parametrize("stage", ["distill", "qat_router"])
def test_the_distillation_refuses_compiled_blocks(compose_config, stage):
    cfg = compose_config("model=tiny", "logger=none", f"stage={stage}", "model.transformer.compile=aot_eager")
    with pytest.raises((ConfigError, InstantiationException), match=rf"stage={stage}.*model.transformer.compile=null"):
        instantiate(cfg.module)
