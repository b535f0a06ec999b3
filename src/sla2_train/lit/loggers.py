"""Loggers of the training run, as Lightning's but without the noise they cause on every start."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import WandbLogger


class QuietWandbLogger(WandbLogger):
    """Lightning's WandbLogger passes `anonymous=None` to wandb.init, and every wandb release since 0.19 answers
    "The anonymous setting has no effect and will be removed" on each run; the key is simply not passed."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
