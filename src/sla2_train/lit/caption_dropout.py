"""Caption dropout: a fraction of each batch trains on the empty-prompt embedding instead of its caption, so the
unconditional prediction that classifier-free guidance subtracts at sampling time is trained as well.

The empty prompt:
- `empty: null` (default) — no caption at all: every text token zero and masked out. That is what a batch
  can say without a text encoder (the synthetic data has none), and Wan's pipeline zero-pads every prompt to
  its text length, so "zeros" is the padding a caption-free sample would get.
- `empty: <file.safetensors>` — the text encoder's embedding of "" (tensor `text_embeds`, [L, text_dim], L its
  true token count): the exact unconditional input of `WanPipeline(negative_prompt="")`. Make it once with the
  encoder that made the shards (sla2-prepare's TextEncoder on [""]) and save it with safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file

from sla2_train.models import ConfigError


class EmptyPrompt:
    """The empty prompt's text embedding (module docstring: `path` None is no caption at all), padded or cut to a
    batch's text length. `key` is the config key `path` came from, for errors."""

    def __init__(self, path: str | None, key: str):
        self.key = key
        self.embeds = None if path is None else self._read(path)
        # The padded embedding per (length, dim, dtype, device): copying it from host memory at every step made
        # every step wait for the GPU (a pageable host-to-device copy synchronises the stream).
        self._padded: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _read(self, path: str) -> torch.Tensor:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"{self.key}: no file at {str(file)!r}")
        tensors = load_file(file)
        if "text_embeds" not in tensors or tensors["text_embeds"].dim() != 2:
            raise ConfigError(f"{self.key}: {str(file)!r} needs a tensor 'text_embeds' [L, text_dim]")
        return tensors["text_embeds"]

    def embedding(self, length: int, dim: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding [length, dim], mask [length]), built once per length, dtype and device and shared by every
        call: read only."""
        key = (length, dim, like.dtype, like.device)
        if key not in self._padded:
            self._padded[key] = self._pad(length, dim, like)
        return self._padded[key]

    def _pad(self, length: int, dim: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text = torch.zeros(length, dim, dtype=like.dtype, device=like.device)
        mask = torch.zeros(length, dtype=torch.bool, device=like.device)
        if self.embeds is not None:
            if self.embeds.shape[1] != dim:
                raise ConfigError(f"{self.key} has text_dim {self.embeds.shape[1]}, the data has {dim}")
            n = min(length, self.embeds.shape[0])
            text[:n] = self.embeds[:n].to(text)
            mask[:n] = True
        return text, mask


class CaptionDropout:
    def __init__(self, rate: float = 0.1, empty: str | None = None):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"stage.caption_dropout.rate must be in [0, 1], got {rate}")
        self.rate = rate
        self.empty = EmptyPrompt(empty, "stage.caption_dropout.empty")

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of `batch` whose dropped samples (each with probability `rate`, from torch's RNG) carry the
        empty prompt; batch["caption_dropped"] [B] says which."""
        text = batch["text_embeds"]
        b, length, dim = text.shape
        drop = torch.rand(b, device=text.device) < self.rate
        mask = batch.get("text_mask")
        mask = torch.ones(b, length, dtype=torch.bool, device=text.device) if mask is None else mask
        empty_text, empty_mask = self.empty.embedding(length, dim, text)
        out = dict(batch)
        out["text_embeds"] = torch.where(drop[:, None, None], empty_text, text)
        out["text_mask"] = torch.where(drop[:, None], empty_mask, mask)
        out["caption_dropped"] = drop
        return out
