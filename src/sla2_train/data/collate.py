"""Decoded samples → the batch contract the Lightning module relies on.

    "latents":     [B, C, F, H, W] in the shards' dtype (bfloat16 as prepared; float32 where samples differ)
    "text_embeds": [B, text_len, text_dim] in the shards' dtype, zero beyond each caption's length
    "text_mask":   bool    [B, text_len], True = real token
    "keys":        list[str]
Text is stored unpadded and padded here, so one dataset serves any text_len; captions longer than
text_len are truncated (Wan's UMT5 setup truncates at 512 tokens anyway).
The stored dtype is kept: a float32 batch is twice the bytes through the worker's shared memory, the pinning
thread and the host-to-device copy, for no precision (the shards hold bfloat16). The training step casts on the
device (lit/batch.py).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def collate(samples: Sequence[dict[str, Any]], text_len: int) -> dict[str, Any]:
    if not samples:
        raise ValueError("cannot collate an empty batch")
    text_dim = samples[0]["text_embeds"].shape[1]
    batch = len(samples)
    text = torch.zeros(batch, text_len, text_dim, dtype=_common_dtype(s["text_embeds"] for s in samples))
    mask = torch.zeros(batch, text_len, dtype=torch.bool)
    for i, sample in enumerate(samples):
        length = min(sample["text_embeds"].shape[0], text_len)
        text[i, :length] = sample["text_embeds"][:length]
        mask[i, :length] = True
    latent_dtype = _common_dtype(s["latents"] for s in samples)
    return {
        "latents": torch.stack([s["latents"].to(latent_dtype) for s in samples]),
        "text_embeds": text,
        "text_mask": mask,
        "keys": [s["key"] for s in samples],
    }


def _common_dtype(tensors) -> torch.dtype:
    """The samples' dtype when they agree (one prepared dataset), else float32 (datasets of several dtypes mixed)."""
    dtypes = {t.dtype for t in tensors}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32
