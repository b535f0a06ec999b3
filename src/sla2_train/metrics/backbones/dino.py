"""DINO ViT features (the CLS token after the final norm) from a local transformers ViT folder."""

from __future__ import annotations

from pathlib import Path

import torch

from .preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_short_side, to_float


class DinoFeatures:
    """VBench's DINO input: short side resized to the model's size (no crop), ImageNet mean/std; the position
    embeddings are interpolated to the frame's aspect ratio."""

    def __init__(self, folder: Path):
        from transformers import ViTModel

        self.model = ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
        self.size = self.model.config.image_size

    def to(self, device) -> "DinoFeatures":
        self.model.to(device)
        return self

    @torch.no_grad()
    def image(self, video: torch.Tensor, batch: int = 16) -> torch.Tensor:
        device = next(self.model.parameters()).device
        out = []
        for s in range(0, video.shape[0], batch):
            x = resize_short_side(to_float(video[s:s + batch]).to(device), self.size)
            hidden = self.model(pixel_values=normalize(x, IMAGENET_MEAN, IMAGENET_STD),
                                interpolate_pos_encoding=True).last_hidden_state
            out.append(hidden[:, 0])
        return torch.cat(out).float()
