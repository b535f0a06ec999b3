"""Per-frame features in batches: the loop shared by the image backbones."""

from __future__ import annotations

import torch


class FrameEncoder:
    """Subclasses set `self.model` (an nn.Module) and implement `_encode(frames uint8 [n, H, W, 3] on device)`."""

    model: torch.nn.Module

    def to(self, device) -> "FrameEncoder":
        self.model.to(device)
        return self

    @torch.no_grad()
    def image(self, video: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """uint8 [F, H, W, 3] → [F, C] features (not normalised)."""
        device = next(self.model.parameters()).device
        return torch.cat([self._encode(video[s:s + batch].to(device)) for s in range(0, video.shape[0], batch)]).float()

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
