"""PSNR and SSIM between two videos [B, C, F, H, W], via torchmetrics.

Pixel videos pass data_range=1 ([0, 1] frames). Without it the range is the reference's own (max − min),
for latents, which are not in [0, 1].
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def _frames(video: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] → [B·F, C, H, W]: SSIM's window is spatial, so frames are images."""
    if video.dim() != 5:
        raise ValueError(f"expected a video [B, C, F, H, W], got shape {tuple(video.shape)}")
    b, c, f, h, w = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).float()


def _data_range(reference: torch.Tensor, data_range: float | None) -> float:
    return data_range if data_range is not None else max(float(reference.max() - reference.min()), 1e-8)


def video_psnr(pred: torch.Tensor, reference: torch.Tensor, data_range: float | None = None) -> float:
    data_range = _data_range(reference, data_range)
    return float(peak_signal_noise_ratio(pred.float(), reference.float(), data_range=data_range))


def video_ssim(pred: torch.Tensor, reference: torch.Tensor, kernel_size: int = 11,
               data_range: float | None = None) -> float:
    p, r = _frames(pred), _frames(reference)
    # The Gaussian window must fit the (possibly tiny) frame and be odd.
    k = min(kernel_size, *r.shape[-2:])
    k -= 1 - k % 2
    data_range = _data_range(reference, data_range)
    return float(structural_similarity_index_measure(p, r, data_range=data_range, kernel_size=k))
