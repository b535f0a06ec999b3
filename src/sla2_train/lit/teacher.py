"""A frozen dense teacher for stage 2: the same transformer with its initial weights and full attention.

The student (SLA2, hard Top-k, low-bit) also regresses the teacher's velocity on the same noisy input, so
fine-tuning pulls it towards what the dense model predicted rather than only towards the data's flow target.
The copy is taken when the stage is applied (after `init_from`), and is deliberately not a submodule of the
LightningModule: it is never saved in checkpoints, never wrapped by DDP/FSDP, and moves to the data's device on
first use. Its memory is one more copy of the DiT's weights (bf16-mixed keeps them in float32).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sla2_train.models import dense_attention


class DenseTeacher:
    def __init__(self, weight: float = 0.5):
        if weight < 0:
            raise ValueError(f"stage.objective.teacher.weight must be >= 0, got {weight}")
        self.weight = weight
        self.model: nn.Module | None = None

    def attach(self, student: nn.Module) -> None:
        """Freeze a copy of `student` as it is now."""
        self.model = copy.deepcopy(student).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, *inputs) -> torch.Tensor:
        """The teacher's prediction for the student's inputs (noisy latents, timesteps, text)."""
        if self.model is None:
            raise RuntimeError("DenseTeacher used before attach(): the stage attaches it to the model it trains")
        device = inputs[0].device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        with dense_attention(self.model):
            return self.model(*inputs, return_dict=False)[0]
