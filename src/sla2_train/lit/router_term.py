"""Training the router during stage 2: stage 1's distillation as a term of the fine-tune's loss.

Stage 2 fine-tunes the DiT through hard Top-k masks, which pass no gradient to the router; with the paper's
recipe the router stays as stage 1 fitted it to the base DiT. This term keeps fitting it, every step, to the
full attention of the DiT as the fine-tune leaves it, on the q, k, v that the step's own SLA2 forward gives each
layer (captured, detached): the inputs the router meets at inference, at no extra forward. Stage 1's loss
(SoftTop-k SLA2 against full attention on those q, k, v, AttentionDistillation.loss_on) trains the router's
projections. α is held out of the term (its parameters are frozen while the term is built): α mixes what the DiT
is fine-tuned through, and the flow-matching loss alone trains it, as in the paper's stage 2. The cost is stage
1's loss on the sampled layers and query blocks, and the captured q, k, v held until it is built.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from sla2_train.models import ConfigError, capture_qkv, sla2_processors


@contextmanager
def alpha_frozen(model: nn.Module):
    """α's parameters untracked by autograd inside the block (requires_grad restored after it)."""
    params = [p for proc in sla2_processors(model) for p in proc.attention.alpha_parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class RouterDistillation:
    """weight: the term's factor in the stage-2 loss. distillation: an AttentionDistillation (which layers and
    query blocks a step, the per-layer loss), built by the config like stage 1's objective."""

    trains = "router"  # the parameter group the term needs in stage.train

    def __init__(self, distillation, weight: float = 1.0):
        if weight <= 0:
            raise ValueError(f"stage.objective.router.weight must be > 0, got {weight}")
        self.distillation, self.weight = distillation, weight

    def check(self, model: nn.Module, train: list[str]) -> None:
        if self.trains not in train:
            raise ConfigError(f"stage.objective.router trains the router during stage 2, but stage.train={list(train)} "
                              "leaves it frozen: add it, e.g. stage.train=[dit,alpha,router]")
        self.distillation.check(model)

    def __call__(self, model: nn.Module, inputs: tuple
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The model's prediction for `inputs` (the stage-2 forward itself) and the weighted term on its q, k, v."""
        layers = self.distillation.layers(model)
        with capture_qkv(model, layers, dense=False) as procs:
            pred = model(*inputs, return_dict=False)[0]
            captures = [(p.attention, p.captured) for p in procs]
        with alpha_frozen(model):
            loss, _ = self.distillation.loss_on(model, layers, captures)
        return pred, self.weight * loss, {"router_distill": loss.detach()}
