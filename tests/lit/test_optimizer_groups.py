"""Per-group learning rates, and layer sampling that keeps every trainable parameter in the graph."""

import pytest
import torch

from sla2_train.lit.param_groups import parameter_groups
from sla2_train.models import ConfigError


def test_qat_trains_alpha_at_its_own_rate(build_module):
    module, cfg = build_module("stage=qat")
    opt = module.configure_optimizers()
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"dit", "alpha"}
    assert by_name["alpha"]["lr"] == cfg.stage.group_lr.alpha == 1e-3
    assert by_name["dit"]["lr"] == cfg.stage.optimizer.lr == 1e-5
    groups = parameter_groups(module.model)
    assert {id(p) for p in by_name["alpha"]["params"]} == {id(p) for p in groups["alpha"]}
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in module.model.parameters())


def test_group_lr_for_a_group_the_stage_does_not_train(build_module):
    module, _ = build_module("stage=qat", "+stage.group_lr.router=0.1")
    with pytest.raises(ConfigError, match=r"group_lr names groups \['router'\]"):
        module.configure_optimizers()


def test_layers_left_out_get_zero_gradient_not_none(build_module, make_batch):
    """DDP with find_unused_parameters=False fails on a parameter outside the graph (seen with 2 gloo ranks)."""
    module, cfg = build_module("stage=distill", "stage.objective.layers_per_step=1")
    loss, logs = module.stage.objective(module.model, make_batch(cfg), module.flow)
    loss.backward()
    sampled = {int(k.rsplit("_", 1)[1]) for k in logs if k.startswith("distill/loss/layer_")}
    assert len(sampled) == 1
    for i, proc in enumerate(module.model.blocks):
        grads = [p.grad for p in proc.attn1.processor.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
        if i not in sampled:
            assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
        else:
            assert any(g.abs().sum() > 0 for g in grads)
