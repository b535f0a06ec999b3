"""VBench's frame-level formulas, on uint8 videos [F, H, W, 3] (or features per frame).

The formulas are computed here rather than through the VBench package (it pins old transformers and CUDA);
each takes the backbone's output as input, so the arithmetic is tested with constructed values and the
backbones (metrics/backbones/) are swappable.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def check_video(video: torch.Tensor) -> torch.Tensor:
    if video.dim() != 4 or video.shape[-1] != 3 or video.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 video [F, H, W, 3], got {video.dtype} {tuple(video.shape)}")
    return video


def temporal_flickering(video: torch.Tensor) -> float:
    """(255 − mean |frame_t − frame_{t−1}|) / 255 over all consecutive pairs: 1.0 for a still video."""
    v = check_video(video).double()
    if v.shape[0] < 2:
        raise ValueError("temporal flickering needs at least 2 frames")
    return float((255.0 - (v[1:] - v[:-1]).abs().mean()) / 255.0)


def frame_consistency(features: torch.Tensor) -> float:
    """VBench subject/background consistency of per-frame features [F, C]:
    mean over t ≥ 1 of ½(max(0, cos(f_{t−1}, f_t)) + max(0, cos(f_0, f_t)))."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"expected per-frame features [F ≥ 2, C], got {tuple(features.shape)}")
    f = F.normalize(features.double(), dim=-1)
    to_previous = (f[1:] * f[:-1]).sum(-1).clamp_min(0)
    to_first = (f[1:] * f[:1]).sum(-1).clamp_min(0)
    return float(((to_previous + to_first) / 2).mean())


Interpolator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def motion_smoothness(video: torch.Tensor, interpolate: Interpolator, batch: int = 8) -> float:
    """VBench motion smoothness: the odd frames are rebuilt from their even neighbours by `interpolate`
    (float [N, 3, H, W] in [0, 1] twice → the middle frame), and scored as (255 − mean |rebuilt − real|) / 255."""
    v = check_video(video).permute(0, 3, 1, 2).float() / 255.0
    if v.shape[0] < 3:
        raise ValueError("motion smoothness needs at least 3 frames")
    before, real, after = v[0:-2:2], v[1:-1:2], v[2::2]
    errors = []
    for s in range(0, real.shape[0], batch):
        mid = interpolate(before[s:s + batch], after[s:s + batch]).float().clamp(0, 1)
        # Rebuilt frames are rounded to uint8 first, as VBench compares saved frames.
        errors.append(((mid * 255).round() - (real[s:s + batch] * 255).round()).abs().flatten(1))
    return float((255.0 - torch.cat(errors).mean()) / 255.0)


def linear_blend(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The weight-free interpolator (mean of the neighbours): exact for linear fades, a lower bound elsewhere."""
    return (a + b) / 2


def top_flow_magnitude(flow: torch.Tensor, fraction: float = 0.05) -> torch.Tensor:
    """Mean of the largest `fraction` of per-pixel flow magnitudes, per pair: flow [N, 2, H, W] → [N]."""
    rad = flow.double().pow(2).sum(1).sqrt().flatten(1)
    cut = max(1, int(rad.shape[1] * fraction))
    return rad.topk(cut, dim=1).values.mean(1)


def is_dynamic(pair_scores: torch.Tensor, num_frames: int, height: int, width: int) -> bool:
    """VBench dynamic degree for one video: moving when at least round(4·frames/16) consecutive pairs have a
    top-5% flow magnitude above 6·min(H, W)/256 (the threshold scales with the resolution)."""
    threshold = 6.0 * min(height, width) / 256.0
    needed = round(4 * num_frames / 16.0)
    return int((pair_scores > threshold).sum()) >= needed


def sample_at_fps(video: torch.Tensor, fps: float, target_fps: float = 8.0) -> torch.Tensor:
    """Every round(fps / 8)-th frame, as VBench samples frames for dynamic degree."""
    return video[:: max(1, round(fps / target_fps))]
