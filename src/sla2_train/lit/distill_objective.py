"""Stage 1 objective: SLA2 (SoftTop-k) regressed onto full attention, layer by layer.

The frozen DiT runs densely on noised latents at flow-matching timesteps; each self-attention layer's
q, k, v (after q/k norm and RoPE) and its dense output are captured, then every chosen layer's SLA2
recomputes the output from the same q, k, v. Layers see the dense model's activations, never SLA2's,
so the teacher is exactly the model being approximated.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sla2_train.metrics import relative_l1
from sla2_train.models import dense_capture, sla2_processors

from .batch import latents_and_text
from .flow_matching import FlowMatching


class AttentionDistillation:
    """layers_per_step: distil a random subset of layers per step (bounds the memory of the captures)."""

    def __init__(self, layers_per_step: int | None = None):
        if layers_per_step is not None and layers_per_step < 1:
            raise ValueError(f"stage.objective.layers_per_step must be >= 1 or null, got {layers_per_step}")
        self.layers_per_step = layers_per_step

    def _layers(self, num_layers: int, device: torch.device) -> list[int] | None:
        if self.layers_per_step is None or self.layers_per_step >= num_layers:
            return None
        return sorted(torch.randperm(num_layers)[: self.layers_per_step].tolist())

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Any], flow: FlowMatching
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0, text = latents_and_text(batch)
        sigma = flow.sample_sigmas(x0.shape[0], x0.device)
        noisy = flow.noisy(x0, torch.randn_like(x0), sigma)
        layers = self._layers(len(sla2_processors(model)), x0.device)
        with torch.no_grad(), dense_capture(model, layers) as procs:
            model(noisy, flow.timesteps(sigma), text, return_dict=False)
            captures = [(p.attention, p.captured, p.captured_out) for p in procs]
        ids = layers if layers is not None else list(range(len(captures)))
        losses, logs = [], {}
        for i, (attention, (q, k, v), teacher) in zip(ids, captures):
            student = attention(q, k, v, layout="bnhd")
            mse = F.mse_loss(student.float(), teacher.float())
            losses.append(mse)
            logs[f"distill/mse/layer_{i}"] = mse.detach()
            logs[f"distill/rel_l1/layer_{i}"] = relative_l1(student.detach(), teacher)
        loss = torch.stack(losses).mean()
        logs["distill/mse"] = loss.detach()
        return loss, logs
