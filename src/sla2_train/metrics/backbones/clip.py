"""CLIP image and text features from a local transformers folder (CLIPModel + its tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch

from .frames import FrameEncoder
from .preprocess import CLIP_MEAN, CLIP_STD, center_crop, normalize, resize_short_side, to_float


def _features(out) -> torch.Tensor:
    # transformers 4 returns the projected features, 5 an output object holding them as pooler_output.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipFeatures(FrameEncoder):
    """CLIP's preprocessing (short side to the model's size, centre crop, CLIP mean/std) and projections."""

    def __init__(self, folder: Path, with_text: bool = False):
        from transformers import AutoTokenizer, CLIPModel

        self.model = CLIPModel.from_pretrained(folder).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder) if with_text else None
        self.size = self.model.config.vision_config.image_size

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        x = center_crop(resize_short_side(to_float(frames), self.size), self.size)
        return _features(self.model.get_image_features(pixel_values=normalize(x, CLIP_MEAN, CLIP_STD)))

    @torch.no_grad()
    def text(self, prompt: str) -> torch.Tensor:
        device = next(self.model.parameters()).device
        max_len = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer([prompt], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tokens.input_ids.to(device),
                                           attention_mask=tokens.attention_mask.to(device))
        return _features(out).float()[0]
