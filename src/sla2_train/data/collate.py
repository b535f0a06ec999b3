"""Decoded samples → the batch contract the Lightning module relies on.

    "latents":     float32 [B, C, F, H, W]
    "text_embeds": float32 [B, text_len, text_dim], zero beyond each caption's length
    "text_mask":   bool    [B, text_len], True = real token
    "keys":        list[str]
Text is stored unpadded and padded here, so one dataset serves any text_len; captions longer than
text_len are truncated (Wan's UMT5 setup truncates at 512 tokens anyway).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def collate(samples: Sequence[dict[str, Any]], text_len: int) -> dict[str, Any]:
    if not samples:
        raise ValueError("cannot collate an empty batch")
    text_dim = samples[0]["text_embeds"].shape[1]
    batch = len(samples)
    text = torch.zeros(batch, text_len, text_dim, dtype=torch.float32)
    mask = torch.zeros(batch, text_len, dtype=torch.bool)
    for i, sample in enumerate(samples):
        length = min(sample["text_embeds"].shape[0], text_len)
        text[i, :length] = sample["text_embeds"][:length].float()
        mask[i, :length] = True
    return {
        "latents": torch.stack([s["latents"].float() for s in samples]),
        "text_embeds": text,
        "text_mask": mask,
        "keys": [s["key"] for s in samples],
    }
