"""Stage 2 objective: the flow-matching (rectified-flow) loss of the DiT itself, run with SLA2 attention."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .batch import latents_and_text
from .flow_matching import FlowMatching


class FlowMatchingLoss:
    def __call__(
        self, model: nn.Module, batch: Mapping[str, Any], flow: FlowMatching
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0, text = latents_and_text(batch)
        noise = torch.randn_like(x0)
        sigma = flow.sample_sigmas(x0.shape[0], x0.device)
        pred = model(flow.noisy(x0, noise, sigma), flow.timesteps(sigma), text, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), flow.target(x0, noise).float())
        return loss, {"flow/mse": loss.detach(), "flow/sigma_mean": sigma.mean()}
