"""What the objectives read from a data batch (the sla2_train.data contract)."""

from __future__ import annotations

from typing import Any, Mapping

import torch


def latents_and_text(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents [B, C, F, H, W], text embeddings [B, L, D] zeroed past each caption as Wan's pipeline does), both
    float32: batches travel in the shards' dtype (data/collate.py) and are cast here, on the device."""
    text = batch["text_embeds"].float()
    mask = batch.get("text_mask")
    if mask is not None:
        text = text * mask[..., None].to(text.dtype)
    return batch["latents"].float(), text
