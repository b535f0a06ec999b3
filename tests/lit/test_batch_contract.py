"""The step's view of a batch: shards' dtype in, float32 out, padding zeroed."""

from __future__ import annotations

import torch

from sla2_train.data.collate import collate
from sla2_train.lit.batch import latents_and_text


def test_the_step_reads_float32_with_padding_zeroed():
    batch = collate([{"key": "a", "latents": torch.randn(2, 1, 3, 3).bfloat16(),
                      "text_embeds": torch.randn(2, 4).bfloat16()}], text_len=5)
    batch["text_embeds"][0, 3] = 7.0  # junk past the caption must not reach the model
    latents, text = latents_and_text(batch)
    assert latents.dtype == text.dtype == torch.float32
    assert torch.equal(latents, batch["latents"].float())
    assert torch.equal(text[0, :2], batch["text_embeds"][0, :2].float()) and text[0, 2:].abs().sum() == 0
