"""Stages are config: what trains, on which loss, in which attention mode; and each loss does its job."""

import pytest
import torch

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from sla2_train.lit import SLA2Module, parameter_groups
from sla2_train.models import ConfigError, sla2_processors


def trainable_ids(model):
    return {id(p) for p in model.parameters() if p.requires_grad}


def ids(params):
    return {id(p) for p in params}


def snapshot(params):
    return [p.detach().clone() for p in params]


def test_distill_trains_router_and_alpha_only_with_soft_topk(build_module):
    module, _ = build_module("stage=distill")
    groups = parameter_groups(module.model)
    assert groups["router"] and groups["alpha"]
    assert trainable_ids(module.model) == ids(groups["router"]) | ids(groups["alpha"])
    assert all(p.attention.topk == "soft" and not p.attention.quant for p in sla2_processors(module.model))


def test_qat_trains_dit_and_alpha_with_hard_topk_and_fake_quant(build_module):
    module, _ = build_module("stage=qat")
    groups = parameter_groups(module.model)
    assert trainable_ids(module.model) == ids(groups["dit"]) | ids(groups["alpha"])
    assert not ids(groups["router"]) & trainable_ids(module.model)
    assert all(p.attention.topk == "hard" and p.attention.quant for p in sla2_processors(module.model))


def test_groups_partition_the_model(build_module):
    module, _ = build_module()
    groups = parameter_groups(module.model)
    all_ids = [id(p) for g in groups.values() for p in g]
    assert len(all_ids) == len(set(all_ids)) == len(list(module.model.parameters()))


def test_distill_lowers_the_attention_mse_on_a_fixed_batch(build_module, make_batch):
    module, cfg = build_module("stage=distill", "attention.sparsity=0.9")
    batch = make_batch(cfg)
    dit = snapshot(parameter_groups(module.model)["dit"])
    optimizer = module.configure_optimizers()

    def loss_at_fixed_noise():
        torch.manual_seed(1234)  # same σ and ε every call: only the router and α change between calls
        return module.stage.objective(module.model, batch, module.flow)[0]

    with torch.no_grad():
        before = loss_at_fixed_noise().item()
    for _ in range(15):
        optimizer.zero_grad()
        loss_at_fixed_noise().backward()
        optimizer.step()
    with torch.no_grad():
        after = loss_at_fixed_noise().item()
    assert after < 0.8 * before, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(dit, parameter_groups(module.model)["dit"]))


def test_qat_trains_the_dit_with_a_finite_flow_matching_loss(build_module, make_batch):
    module, cfg = build_module("stage=qat")
    groups = parameter_groups(module.model)
    router, dit = snapshot(groups["router"]), snapshot(groups["dit"])
    optimizer = module.configure_optimizers()
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss, logs = module.stage.objective(module.model, make_batch(cfg), module.flow)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in groups["alpha"])
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.equal(a, b) for a, b in zip(router, groups["router"]))
    assert sum(not torch.equal(a, b) for a, b in zip(dit, groups["dit"])) > len(dit) // 2


def test_distill_with_dense_attention_is_refused(build_module):
    with pytest.raises(InstantiationException) as err:
        build_module("stage=distill", "attention=full")
    assert isinstance(err.value.__cause__, ConfigError) and "attention=sla2" in str(err.value.__cause__)


def test_qat_of_the_dense_model_is_plain_finetuning(build_module, make_batch):
    module, cfg = build_module("stage=qat", "attention=full")
    assert trainable_ids(module.model) == ids(module.model.parameters())
    loss, _ = module.stage.objective(module.model, make_batch(cfg), module.flow)
    assert torch.isfinite(loss)


def test_unknown_parameter_group_is_named(build_module):
    with pytest.raises(InstantiationException) as err:
        build_module("stage=qat", "stage.train=[dit,experts]")
    assert isinstance(err.value.__cause__, ConfigError) and "experts" in str(err.value.__cause__)


@pytest.mark.parametrize(
    "override, words",
    [
        ("stage.attention_mode.topk=sfot", ["topk", "sfot"]),  # would run hard Top-k: the router never trains
        ("+stage.attention_mode.sparsity=1.5", ["sparsity", "1.5"]),
        ("+stage.attention_mode.router=null", ["router"]),  # a submodule, not an option
    ],
)
def test_bad_attention_mode_is_named(build_module, override, words):
    with pytest.raises(InstantiationException) as err:
        build_module("stage=distill", override)
    cause = err.value.__cause__
    assert isinstance(cause, ConfigError) and str(cause).startswith("stage.attention_mode: ")
    assert all(w in str(cause) for w in words), cause


@pytest.mark.parametrize("stage", ["distill", "qat"])
def test_a_model_loaded_in_eval_mode_trains_in_train_mode(compose_config, stage):
    """from_pretrained returns eval-mode modules and Lightning keeps modes at fit start: the module sets train."""
    cfg = compose_config("model=tiny", "logger=none", f"stage={stage}")
    model = instantiate(cfg.module.model).eval()
    module = SLA2Module(model, instantiate(cfg.stage), instantiate(cfg.flow))
    assert all(m.training for m in module.model.modules())
