"""A training stage is data, not code: which groups train, with which objective, in which attention mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from sla2_train.models import set_attention_mode

from .param_groups import set_trainable


@dataclass
class Stage:
    name: str
    train: list[str]
    objective: Callable[..., Any]
    optimizer: Callable[..., Any]  # partial: params -> torch.optim.Optimizer
    attention_mode: dict[str, Any] = field(default_factory=dict)  # SLA2Attention options, e.g. topk, quant
    # alpha_calibration.AlphaCalibration: α in closed form at the start or the end of the run; None = off
    calibrate_alpha: Any = None
    # Learning rate per trained group, overriding the optimizer's own lr (e.g. α, a handful of logits, next to
    # the DiT's 1e-5 in stage 2, which would leave α all but frozen).
    group_lr: dict[str, float] = field(default_factory=dict)
    # A stage that freezes the router starts from stage 1's (init_from); train.py refuses to start it without
    # one unless this says the untrained router is meant (run_guards.check_router).
    allow_untrained_router: bool = False
    # The recipe's optional parts (each None = off); module.py applies them, their files say how.
    scheduler: Callable[..., Any] | None = None  # partial: optimizer -> LR scheduler, stepped per optimizer step
    ema: Any = None  # ema.WeightEMA: averaged trained weights, saved as checkpoint["ema"]
    caption_dropout: Callable[..., Any] | None = None  # caption_dropout.CaptionDropout: batch -> batch
    tau_schedule: Callable[[int], float] | None = None  # temperature.TemperatureSchedule: step -> SoftTop-k τ
    monitor: Callable[..., Any] | None = None  # monitoring.HardTopkMonitor: validation metrics of the router

    def apply(self, model: nn.Module) -> None:
        check = getattr(self.objective, "check", None)
        if check is not None:  # an objective may refuse a model or a trained set it cannot train with, before any step
            check(model, list(self.train))
        set_trainable(model, list(self.train))
        set_attention_mode(model, **dict(self.attention_mode))
