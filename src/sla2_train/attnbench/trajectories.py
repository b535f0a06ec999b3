"""Dense sampling trajectories of prompts, with every self-attention layer's (q, k, v) handed over as it is made.

The videos are sampled as eval.py samples its dense videos (WanPipeline of the model folder: its tokenizer and
UMT5, the configured scheduler, classifier-free guidance, the same seeded noise), stopping at the latents.
Inside `dense_capture` the SLA2 layers run diffusers' dense attention and keep their last (q, k, v); a forward
hook reads them after each transformer call of a measured step (both the conditional and the unconditional
call: inference runs SLA2 in both), so only one forward's captures are alive at a time. Each capture is handed
over with where it was made, (sampling step, guidance branch), so errors can be told apart by noise level and by
the conditional and unconditional calls (the router is trained on captioned clips only unless stage 1 drops
captions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from sla2_train.evaluation.pipeline import GUIDANCE_BRANCHES, forwards_per_step, initial_noise, video_size
from sla2_train.models import dense_capture

Where = tuple[int, str]  # (sampling step, guidance branch) of a capture
# consume(layer index, q, k, v, where), q, k, v each [1, H, N, D] float32
Consumer = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, Where], None]


@dataclass
class Sampling:
    """How the trajectories are sampled (the generation settings eval.py records)."""

    latent_shape: Sequence[int]
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str
    max_sequence_length: int
    seed: int
    device: str

    @property
    def forwards_per_step(self) -> int:
        return forwards_per_step(self.guidance_scale)


class _Hook:
    def __init__(self, procs, layers: Sequence[int], steps: set[int] | None, per_step: int, consume: Consumer, bar):
        self.procs, self.layers, self.steps, self.per_step = procs, layers, steps, per_step
        self.consume, self.bar, self.forwards = consume, bar, 0

    def __call__(self, module, args, output) -> None:
        step, branch = divmod(self.forwards, self.per_step)
        self.forwards += 1
        if self.steps is None or step in self.steps:
            for layer, proc in zip(self.layers, self.procs):
                q, k, v = (t.transpose(1, 2).float() for t in proc.captured)
                self.consume(layer, q, k, v, (step, GUIDANCE_BRANCHES[branch]))
        self.bar.update()


@torch.no_grad()
def capture_trajectories(pipe, model, prompts: Sequence[str], sampling: Sampling, layers: Sequence[int],
                         steps: Sequence[int] | None, consume: Consumer, desc: str,
                         on_prompt: Callable[[int], None] | None = None) -> None:
    """Sample every prompt densely from `sampling.seed`'s noise; `consume` each measured forward's captures of
    `layers` at the sampling `steps` (indices into the schedule; None: every step). `on_prompt(i)` is called
    before prompt i is sampled."""
    chosen = None if steps is None else set(steps)
    per_step = sampling.forwards_per_step
    size = video_size(pipe, sampling.latent_shape)
    pipe.set_progress_bar_config(disable=True)
    total = len(prompts) * sampling.num_inference_steps * per_step
    with dense_capture(model, layers) as procs, tqdm(total=total, desc=desc, unit="forward") as bar:
        for i, prompt in enumerate(prompts):
            if on_prompt is not None:
                on_prompt(i)
            handle = model.register_forward_hook(_Hook(procs, layers, chosen, per_step, consume, bar))
            try:
                pipe(prompt=prompt, negative_prompt=sampling.negative_prompt,
                     latents=initial_noise(sampling.latent_shape, sampling.seed, sampling.device),
                     num_inference_steps=sampling.num_inference_steps, guidance_scale=sampling.guidance_scale,
                     max_sequence_length=sampling.max_sequence_length, output_type="latent", **size)
            finally:
                handle.remove()
