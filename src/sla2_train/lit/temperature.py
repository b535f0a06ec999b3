"""SoftTop-k temperature schedule for stage 1: τ moves linearly from `start` to `end` over `steps` optimizer
steps, then stays at `end`.

A high τ early spreads the router's gradient over many key blocks; a low τ late brings SoftTop-k close to the
hard Top-k that inference runs (docs/method.md, SoftTop-k).
"""

from __future__ import annotations


class TemperatureSchedule:
    def __init__(self, start: float, end: float, steps: int):
        if start <= 0 or end <= 0:
            raise ValueError(f"stage.tau_schedule: start and end must be > 0, got {start}, {end}")
        if steps < 1:
            raise ValueError(f"stage.tau_schedule.steps must be >= 1, got {steps}")
        self.start, self.end, self.steps = start, end, steps

    def __call__(self, step: int) -> float:
        t = min(1.0, max(0, step) / self.steps)
        return (1 - t) * self.start + t * self.end
