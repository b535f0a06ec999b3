"""uint8 frames → normalised network inputs, in torch (no torchvision)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def to_float(video: torch.Tensor) -> torch.Tensor:
    """uint8 [F, H, W, 3] → float [F, 3, H, W] in [0, 1]."""
    return video.permute(0, 3, 1, 2).float() / 255.0


def resize_short_side(x: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    out = (max(size, round(h * scale)), max(size, round(w * scale)))
    return F.interpolate(x, size=out, mode=mode, align_corners=False, antialias=True).clamp(0, 1)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def limit_long_side(x: torch.Tensor, max_side: int = 512) -> torch.Tensor:
    """Frames whose long side exceeds max_side are scaled down to it (VBench's IQA input; bounds LPIPS's memory)."""
    h, w = x.shape[-2:]
    if max(h, w) <= max_side:
        return x
    s = max_side / max(h, w)
    return F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True, align_corners=False)
