"""DINO ViT features (the CLS token after the final norm) from a local transformers ViT folder."""

from __future__ import annotations

from pathlib import Path

import torch

from .frames import FrameEncoder
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_short_side, to_float


class DinoFeatures(FrameEncoder):
    """VBench's DINO input: short side resized to the model's size (no crop), ImageNet mean/std; the position
    embeddings are interpolated to the frame's aspect ratio."""

    def __init__(self, folder: Path):
        from transformers import ViTModel

        self.model = ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
        self.size = self.model.config.image_size

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        x = resize_short_side(to_float(frames), self.size)
        hidden = self.model(pixel_values=normalize(x, IMAGENET_MEAN, IMAGENET_STD), interpolate_pos_encoding=True)
        return hidden.last_hidden_state[:, 0]
