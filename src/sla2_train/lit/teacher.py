"""A frozen dense teacher for stage 2: the same transformer with its initial weights and full attention.

The student (SLA2, hard Top-k, low-bit) also regresses the teacher's velocity on the same noisy input, so
fine-tuning pulls it towards what the dense model predicted rather than only towards the data's flow target.
The copy is taken when the stage is applied (after `init_from`), and is deliberately not a submodule of the
LightningModule: it is never saved in checkpoints, never wrapped by DDP/FSDP, and moves to the data's device on
first use. Its memory is one more copy of the DiT's weights (bf16-mixed keeps them in float32).

`guided_weight` > 0 also matches the guided velocity sampling steps with, u + g·(c − u), of student and teacher
(c on the caption, u on the empty prompt `empty`, read as caption dropout reads it; g = `guidance_scale`): guidance
multiplies the difference of the two calls by g, so an error that is small in each call can be large in what
the sampler uses, and the caption's part of the velocity lives in that difference. Costs one more student and
two teacher calls a step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sla2_train.models import dense_attention

from .caption_dropout import EmptyPrompt


class DenseTeacher:
    def __init__(self, weight: float = 0.5, guided_weight: float = 0.0, guidance_scale: float = 5.0,
                 empty: str | None = None):
        if weight < 0 or guided_weight < 0:
            raise ValueError(f"stage.objective.teacher: weight and guided_weight must be >= 0, got {weight} and "
                             f"{guided_weight}")
        self.weight, self.guided_weight, self.guidance_scale = weight, guided_weight, guidance_scale
        self.empty = EmptyPrompt(empty, "stage.objective.teacher.empty") if guided_weight > 0 else None
        self.model: nn.Module | None = None

    @property
    def used(self) -> bool:
        return self.weight > 0 or self.guided_weight > 0

    def empty_text(self, text: torch.Tensor) -> torch.Tensor:
        """The empty prompt's embedding in place of every caption of `text` [B, L, D]: EmptyPrompt pads it with
        zeros past its length, as latents_and_text zeroes a caption, so its mask has nothing left to zero."""
        b, length, dim = text.shape
        return self.empty.embedding(length, dim, text)[0].expand(b, length, dim)

    def guided(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return uncond + self.guidance_scale * (cond - uncond)

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
