"""Generate latents with a Wan transformer and a diffusers flow-matching scheduler (no text encoder, no VAE)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm


@torch.no_grad()
def sample_latents(
    model: nn.Module,
    scheduler,
    noise: torch.Tensor,
    text: torch.Tensor,
    num_steps: int,
    after_forward: Callable[[int], None] | None = None,
    desc: str = "sampling",
) -> torch.Tensor:
    """Euler-integrate from `noise` [B, C, F, H, W] with `scheduler` (e.g. FlowMatchEulerDiscreteScheduler);
    `after_forward(step)` runs after each transformer call (e.g. to read captured attention inputs)."""
    scheduler.set_timesteps(num_steps, device=noise.device)
    x = noise
    for step, t in enumerate(tqdm(scheduler.timesteps, desc=desc, leave=False)):
        pred = model(x, t.expand(x.shape[0]).to(x.dtype), text, return_dict=False)[0]
        if after_forward is not None:
            after_forward(step)
        x = scheduler.step(pred, t, x, return_dict=False)[0]
    return x
