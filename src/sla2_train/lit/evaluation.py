"""Dense vs SLA2 on the same model and seeds: latent PSNR/SSIM, and per-layer attention error.

The per-layer error is measured on the dense trajectory: at every sampling step each layer's captured
q, k, v go through that layer's SLA2 and through full attention, so every layer is judged on the inputs
the dense model gives it (errors do not compound across layers in this number; PSNR/SSIM show compounding).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sla2_train.metrics import relative_l1, video_psnr, video_ssim
from sla2_train.models import dense_attention, dense_capture, sla2_processors
from sla2_train.diffusion import sample_latents


def _layer_errors(procs) -> list[float]:
    errors = []
    for p in procs:
        q, k, v = p.captured
        full = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
        errors.append(float(relative_l1(p.attention(q, k, v, layout="bnhd"), full)))
    return errors


@torch.no_grad()
def compare_dense_and_sla2(
    model: nn.Module,
    scheduler,
    latent_shape: Sequence[int],
    text_len: int,
    text_dim: int,
    seeds: Sequence[int],
    num_steps: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    model.eval()
    per_sample, layer_sums, layer_count = [], None, 0
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((1, *latent_shape), generator=g).to(device)
        text = torch.randn((1, text_len, text_dim), generator=g).to(device)
        if sla2_processors(model):
            with dense_capture(model) as procs:
                errors: list[list[float]] = []
                dense = sample_latents(
                    model, scheduler, noise, text, num_steps, lambda _: errors.append(_layer_errors(procs)), "dense"
                )
            step_sums = torch.tensor(errors, dtype=torch.float64).sum(dim=0)
            layer_sums = step_sums if layer_sums is None else layer_sums + step_sums
            layer_count += len(errors)
        else:
            with dense_attention(model):
                dense = sample_latents(model, scheduler, noise, text, num_steps, desc="dense")
        sparse = sample_latents(model, scheduler, noise, text, num_steps, desc="sla2")
        per_sample.append({"seed": int(seed), "psnr": video_psnr(sparse, dense), "ssim": video_ssim(sparse, dense)})
    per_layer = [] if layer_sums is None else (layer_sums / layer_count).tolist()
    return {
        "psnr": sum(s["psnr"] for s in per_sample) / len(per_sample),
        "ssim": sum(s["ssim"] for s in per_sample) / len(per_sample),
        "rel_l1_per_layer": per_layer,
        "rel_l1_mean": sum(per_layer) / len(per_layer) if per_layer else 0.0,
        "per_sample": per_sample,
    }
