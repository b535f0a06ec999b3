"""Rectified-flow noising as Wan and diffusers' FlowMatchEulerDiscreteScheduler define it.

x_t = (1 − σ) x0 + σ ε, the model predicts the velocity ε − x0, and the model's timestep is σ · 1000.
Training σ are drawn uniformly (or logit-normal) and then shifted like the scheduler's sigmas:
σ' = s·σ / (1 + (s − 1)·σ), so training sees the noise levels that sampling with the same shift visits.
"""

from __future__ import annotations

import torch


class FlowMatching:
    def __init__(self, shift: float = 3.0, num_train_timesteps: int = 1000, sampling: str = "uniform"):
        if shift <= 0:
            raise ValueError(f"flow.shift must be > 0, got {shift}")
        if sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"flow.sampling must be 'uniform' or 'logit_normal', got {sampling!r}")
        self.shift, self.num_train_timesteps, self.sampling = float(shift), int(num_train_timesteps), sampling

    def shifted(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.shift * sigma / (1 + (self.shift - 1) * sigma)

    def sample_sigmas(self, n: int, device: torch.device | str = "cpu", generator=None) -> torch.Tensor:
        if self.sampling == "uniform":
            u = torch.rand(n, device=device, generator=generator)
        else:
            u = torch.sigmoid(torch.randn(n, device=device, generator=generator))
        return self.shifted(u)

    def timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.num_train_timesteps

    @staticmethod
    def _bcast(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return sigma.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = self._bcast(sigma, x0)
        return (1 - s) * x0 + s * noise

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0
