"""Initialise α from the softmax mass the selected blocks really hold (docs/method.md, "α"), before stage 1 trains it.

Runs once, on the first batch of a fresh run: a resumed run or one started from another stage's weights
keeps its trained α. Every rank measures its own batch, so the result is averaged over ranks to keep the
replicas identical.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from sla2_train.diffusion import FlowMatching
from sla2_train.models import dense_capture, sla2_processors

from .batch import latents_and_text


@torch.no_grad()
def calibrate_alpha(
    model: nn.Module,
    batch: Mapping[str, Any],
    flow: FlowMatching,
    average: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    fit=None,
) -> int:
    """Calibrate every SLA2 layer's α on q, k, v captured from a dense run; returns the number of layers.

    fit: an α fit of sla2_train.attention.distill (None: the measured selected mass; LeastSquaresFit: the
    α that minimises the hard-mask error)."""
    procs = [p for p in sla2_processors(model) if p.attention.variant == "sla2"]
    if not procs:
        return 0
    x0, text = latents_and_text(batch)
    sigma = flow.sample_sigmas(x0.shape[0], x0.device)
    with dense_capture(model) as captured:
        model(flow.noisy(x0, torch.randn_like(x0), sigma), flow.timesteps(sigma), text, return_dict=False)
        for proc in captured:
            if proc in procs:
                proc.attention.calibrate_alpha(*proc.captured, layout="bnhd", fit=fit)
    for proc in procs:
        for p in proc.attention.alpha_parameters():
            p.copy_(average(p.detach()))
    return len(procs)
