"""The SLA2 model's velocity against the dense model's, step by step along the dense trajectory.

The per-layer attention error (probes.AttentionProbe) is measured on each layer's own dense inputs, so it does
not compound; a video compounds everything, over every layer and step. Between the two sits the transformer's
output, the velocity the sampler steps with. While the dense video is sampled, `VelocityRecorder` keeps every
transformer call's inputs and output; afterwards `replay` runs each call again through the SLA2 model (every
layer SLA2, and the checkpoint's transformer weights where the dense rows ran the folder's own) and reports,
per sampling step:

- cond / uncond: each guidance branch's velocity against dense's (relative L1);
- guidance: the difference cond − uncond, the part classifier-free guidance scales by its factor g: branches
  each close to dense can still move their difference, and the prompt lives in it;
- guided: what the sampler steps with, uncond + g·(cond − uncond).

Without guidance (g ≤ 1) there is one call a step, reported as cond and guided.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from sla2_train.metrics import relative_l1

from .pipeline import GUIDANCE_BRANCHES

KEYS = (*GUIDANCE_BRANCHES, "guidance", "guided")


def step_errors(dense: Sequence[torch.Tensor], sla2: Sequence[torch.Tensor], guidance_scale: float) -> dict[str, float]:
    """One sampling step's errors; `dense` and `sla2` hold the step's transformer outputs in WanPipeline's call
    order (GUIDANCE_BRANCHES), one output without guidance."""
    if len(dense) != len(sla2) or len(dense) not in (1, 2):
        raise ValueError(f"a step has one call, or two under guidance; got {len(dense)} dense, {len(sla2)} SLA2")
    if len(dense) == 1:
        e = float(relative_l1(sla2[0], dense[0]))
        return {"cond": e, "guided": e}
    (dc, du), (sc, su) = ((t.float() for t in pair) for pair in (dense, sla2))
    return {
        "cond": float(relative_l1(sc, dc)),
        "uncond": float(relative_l1(su, du)),
        "guidance": float(relative_l1(sc - su, dc - du)),
        "guided": float(relative_l1(su + guidance_scale * (sc - su), du + guidance_scale * (dc - du))),
    }


@dataclass
class _Call:
    args: tuple
    kwargs: dict[str, Any]
    output: torch.Tensor


def _output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output.sample


class VelocityRecorder:
    """A forward hook (register with with_kwargs=True) keeping each transformer call's inputs and output of the
    video being sampled; `start()` before each video. Memory: two latents a call on the model's device, and one
    copy of each distinct text embedding (the pipeline hands the same one to every step)."""

    def __init__(self, per_step: int, guidance_scale: float):
        self.per_step, self.guidance_scale = per_step, guidance_scale
        self.calls: list[_Call] = []
        self._kept: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}

    def start(self) -> None:
        self.calls, self._kept = [], {}

    def _keep(self, value):
        if not isinstance(value, torch.Tensor):
            return value
        seen = self._kept.get(id(value))
        if seen is not None and seen[0]() is value and seen[1] == value._version:
            return seen[2]
        copy = value.detach().clone()
        # a weak reference: a freed tensor's id may be reused, and holding every call's latents would double them
        self._kept[id(value)] = (weakref.ref(value), value._version, copy)
        return copy

    def __call__(self, module, args, kwargs, output) -> None:
        self.calls.append(_Call(tuple(self._keep(a) for a in args), {k: self._keep(v) for k, v in kwargs.items()},
                                _output_tensor(output).detach().clone()))

    @torch.no_grad()
    def replay(self, model: torch.nn.Module) -> dict[str, list[float]]:
        """Every recorded call through `model` as it is now; {key: [error per sampling step]} (KEYS present)."""
        if len(self.calls) % self.per_step:
            raise RuntimeError(f"{len(self.calls)} recorded transformer calls are not whole steps of {self.per_step}")
        per_step: dict[str, list[float]] = {}
        for first in range(0, len(self.calls), self.per_step):
            calls = self.calls[first:first + self.per_step]
            sla2 = [_output_tensor(model(*c.args, **c.kwargs)) for c in calls]
            for key, value in step_errors([c.output for c in calls], sla2, self.guidance_scale).items():
                per_step.setdefault(key, []).append(value)
        return per_step


def video_metrics(per_step: dict[str, list[float]]) -> dict[str, float]:
    """A video's velocity errors as metrics (means over its steps), paired across runs like any other metric."""
    out = {"velocity_rel_l1": sum(per_step["guided"]) / len(per_step["guided"])}
    if "guidance" in per_step:
        out["guidance_rel_l1"] = sum(per_step["guidance"]) / len(per_step["guidance"])
    return out


def mean_per_step(videos: Sequence[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Each key's per-step errors averaged over videos."""
    return {k: [sum(v[k][i] for v in videos) / len(videos) for i in range(len(videos[0][k]))] for k in videos[0]}
