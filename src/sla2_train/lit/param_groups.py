"""The named parameter groups a stage config can train: dit, router, alpha."""

from __future__ import annotations

from torch import nn

from sla2_train.models import ConfigError, sla2_processors

GROUPS = ("dit", "router", "alpha")


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """router / alpha: SLA2Attention's own groups (for variant 'sla', α is its linear-branch projection);
    dit: every other parameter of the transformer."""
    router, alpha, attention = [], [], set()
    for proc in sla2_processors(model):
        router += list(proc.attention.router_parameters())
        alpha += list(proc.attention.alpha_parameters())
        attention |= {id(p) for p in proc.parameters()}
    dit = [p for p in model.parameters() if id(p) not in attention]
    return {"dit": dit, "router": router, "alpha": alpha}


def set_trainable(model: nn.Module, train: list[str]) -> int:
    """Freeze everything except the named groups; returns the number of trainable tensors."""
    unknown = sorted(set(train) - set(GROUPS))
    if unknown:
        raise ConfigError(f"stage.train names unknown parameter groups {unknown}; known: {list(GROUPS)}")
    groups = parameter_groups(model)
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = [p for name in train for p in groups[name]]
    for p in chosen:
        p.requires_grad_(True)
    if not chosen:
        raise ConfigError(
            f"stage trains {list(train)} but the model has no such parameters (SLA2 groups need attention=sla2 or sla)"
        )
    return len(chosen)


def optimizer_groups(model: nn.Module, train: list[str], group_lr: dict[str, float], trainable: list[nn.Parameter]):
    """The optimizer's parameter list: plain `trainable` without group_lr, else one group per trained group.

    A group named in group_lr gets that lr; the others keep the optimizer's own.
    """
    if not group_lr:
        return trainable
    unknown = sorted(set(group_lr) - set(train))
    if unknown:
        raise ConfigError(f"stage.group_lr names groups {unknown} that this stage does not train ({list(train)})")
    groups = parameter_groups(model)
    out = []
    for name in train:
        params = [p for p in groups[name] if p.requires_grad]
        if params:
            out.append({"params": params, "name": name, **({"lr": group_lr[name]} if name in group_lr else {})})
    return out
