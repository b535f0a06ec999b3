"""Learning-rate factors for torch.optim.lr_scheduler.LambdaLR, stepped once per optimizer step.

The stage config builds the scheduler node (`stage.scheduler`: LambdaLR with `_partial_: true`, its `lr_lambda`
one of these), so each parameter group (the DiT at 1e-5, α at 1e-3) follows the same shape from its own lr.
"""

from __future__ import annotations

import math


def _check_steps(warmup_steps: int, total_steps: int | None = None) -> None:
    if warmup_steps < 0:
        raise ValueError(f"stage.scheduler.lr_lambda.warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps is not None and total_steps < 1:
        raise ValueError(f"stage.scheduler.lr_lambda.total_steps must be >= 1, got {total_steps}")


class WarmupConstant:
    """Linear warmup from lr/warmup_steps to lr over `warmup_steps` optimizer steps, then constant."""

    def __init__(self, warmup_steps: int = 0):
        _check_steps(warmup_steps)
        self.warmup_steps = warmup_steps

    def warmup(self, step: int) -> float:
        # step 0 already trains at 1/warmup_steps of the lr: a factor of 0 would waste the first step
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0

    def __call__(self, step: int) -> float:
        return self.warmup(step)


class WarmupCosine(WarmupConstant):
    """Linear warmup, then a half cosine from lr down to final_ratio · lr at step `total_steps` (held after it)."""

    def __init__(self, warmup_steps: int = 0, total_steps: int = 500, final_ratio: float = 0.0):
        _check_steps(warmup_steps, total_steps)
        if not 0.0 <= final_ratio <= 1.0:
            raise ValueError(f"stage.scheduler.lr_lambda.final_ratio must be in [0, 1], got {final_ratio}")
        super().__init__(warmup_steps)
        self.total_steps, self.final_ratio = total_steps, final_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup(step)
        # a run shorter than its warmup (a CPU check of a GPU recipe) ends the cosine at once
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.final_ratio + (1.0 - self.final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
