"""Exponential moving average of the trained weights, saved as checkpoint["ema"]["state_dict"].

After every optimizer step: ema ← d · ema + (1 − d) · θ, for the tensors the stage trains (the frozen ones never
change, so their average is themselves). d = decay, or with `warmup` d = min(decay, (1 + n) / (10 + n)) after n
updates: a run from random weights is otherwise averaged with its initialisation for ~1/(1 − decay) steps
(at 0.999, half of the average is still the random start after 690 steps). The names are the LightningModule's state-dict names
("model.<transformer name>"), the form export and `init_from` read (export/checkpoint_format.py), so they
take the averaged weights without further configuration.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sla2_train.export.checkpoint_format import PREFIX


class WeightEMA:
    def __init__(self, decay: float = 0.999, warmup: bool = False):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"stage.ema.decay must be in (0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {}

    @staticmethod
    def _trained(model: nn.Module):
        return ((name, p) for name, p in model.named_parameters() if p.requires_grad)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Start the average at the model's current weights (kept in float32: bf16 would round away updates of
        (1 − decay) · θ)."""
        self.shadow = {name: p.detach().float().clone() for name, p in self._trained(model)}
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if not self.shadow:
            self.reset(model)
        decay = self.current_decay()
        averages, weights = [], []
        for name, p in self._trained(model):
            avg = self.shadow[name]
            if avg.device != p.device:
                avg = self.shadow[name] = avg.to(p.device)
            averages.append(avg)
            weights.append(p.detach().float())
        # One fused update instead of a launch per tensor (a few hundred a step, each a host round of its own).
        torch._foreach_lerp_(averages, weights, 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def assign(self, model: nn.Module, params) -> None:
        """These parameters' average becomes their current value: for weights set in closed form (α fitted
        before or after training), whose values before the fit are not estimates of the same quantity."""
        chosen = {id(p) for p in params}
        for name, p in self._trained(model):
            if id(p) in chosen and name in self.shadow:
                self.shadow[name].copy_(p.detach().float())

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """checkpoint["ema"]: the averages cast to each parameter's dtype, under the module's state-dict names."""
        params = dict(model.named_parameters())
        return {
            "decay": self.decay,
            "updates": self.updates,
            "state_dict": {PREFIX + n: t.to(params[n].dtype).cpu() for n, t in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))
        self.shadow = {n[len(PREFIX):]: t.float() for n, t in state["state_dict"].items()}
