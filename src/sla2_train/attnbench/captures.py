"""Attention sets captured from a Wan transformer through the project's capture hook (models/capture.py).

Contents are latent/text draws (one seed each), noised at a few flow-matching levels; the split is by seed.
With random latents a real checkpoint's attention is that of noise-level inputs, not of real videos: give
encoded latents (`latents`) for a faithful set.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sla2_train.models import SLA2Swap, dense_capture

from .sets import AttentionSet, Splits


@torch.no_grad()
def capture_contents(model, seeds: Sequence[int], latent_shape, text_len: int, sigmas: Sequence[float],
                     latents: torch.Tensor | None = None, texts: torch.Tensor | None = None) -> list[list[tuple]]:
    """[layer][content] (q, k, v) [1, H, N, D] in float32; one content per (seed, σ). `latents` [S, C, F, H, W]
    and `texts` [S, text_len, text_dim] (one per seed) replace the random draws."""
    text_dim = model.config.text_dim
    layers: list[list[tuple]] = []
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        x0 = latents[i : i + 1] if latents is not None else torch.randn(1, *latent_shape, generator=g)
        text = texts[i : i + 1] if texts is not None else torch.randn(1, text_len, text_dim, generator=g)
        for sigma in sigmas:
            noisy = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=g)
            with dense_capture(model) as procs:
                model(noisy, torch.tensor([sigma * 1000.0]), text, return_dict=False)
                captured = [tuple(t.transpose(1, 2).float().contiguous() for t in p.captured) for p in procs]
            if not layers:
                layers = [[] for _ in captured]
            for li, qkv in enumerate(captured):
                layers[li].append(qkv)
    return layers


def wan_sets(model, latent_shape, text_len: int, train_contents: int, heldout_contents: int,
             sigmas: Sequence[float] = (0.25, 0.5, 0.75), seed: int = 0, validation_contents: int = 0) -> Splits:
    """Train / held-out / validation sets from a WanTransformer3DModel (random or loaded); SLA2 processors are
    installed for the capture (dense attention runs during it)."""
    SLA2Swap(variant="sla2").apply(model, latent_shape)
    model.eval()
    heads = model.config.num_attention_heads
    train_seeds = [seed * 100_000 + i for i in range(train_contents)]
    held_seeds = [seed * 100_000 + 50_000 + i for i in range(heldout_contents)]
    val_seeds = [seed * 100_000 + 75_000 + i for i in range(validation_contents)]
    return captured_splits(heads, len(sigmas), *(capture_contents(model, seeds, latent_shape, text_len, sigmas)
                                                  for seeds in (train_seeds, held_seeds, val_seeds)))


def captured_splits(heads: int, per_draw: int, train: list, held: list, val: list) -> Splits:
    """[layer][content] captures of each split (a split without contents as []) → Splits, layers named by block
    and heads by index."""
    empty = [[] for _ in train]
    names = [f"block_{i}" for i in range(len(train))]
    labels = [[f"h{h}" for h in range(heads)]] * len(train)
    return Splits(*(AttentionSet(s or empty, names, labels, per_draw) for s in (train, held, val)))
