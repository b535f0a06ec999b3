"""Attention sets: captured (q, k, v) per layer and content, [1, H, N, D] each, saved as safetensors.

A set is one split (train, validation or held-out); the split is by content (a different video, noise or seed), never by
position, so held-out numbers measure what a router learned about attention, not about these tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file


@dataclass
class AttentionSet:
    """layers[l][c] = (q, k, v) of layer l on content c; `names[l]` labels layer l in reports."""

    layers: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
    names: list[str] = field(default_factory=list)
    head_labels: list[list[str]] = field(default_factory=list)  # per layer, e.g. the synthetic regime per head
    per_draw: int = 1  # consecutive contents from one draw (a captured video at its noise levels)

    def __post_init__(self):
        if not self.names:
            self.names = [f"layer_{i}" for i in range(len(self.layers))]
        if not self.head_labels:
            self.head_labels = [[str(h) for h in range(lay[0][0].shape[1])] for lay in self.layers]

    def to(self, device) -> "AttentionSet":
        layers = [[tuple(t.to(device) for t in qkv) for qkv in contents] for contents in self.layers]
        return AttentionSet(layers, self.names, self.head_labels, self.per_draw)

    def first_draws(self, n: int) -> "AttentionSet":
        """The contents of the first n draws (a count of videos or seeds, as --train-contents gives it)."""
        available = len(self.layers[0]) // self.per_draw
        if n > available:
            raise ValueError(f"--train-contents {n}: the set holds only {available}")
        return AttentionSet([contents[: n * self.per_draw] for contents in self.layers], self.names,
                            self.head_labels, self.per_draw)

    def stacked(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All contents of one layer as one batch [C, H, N, D] (every content has the same N)."""
        return tuple(torch.cat([c[i] for c in self.layers[layer]]) for i in range(3))

    def save(self, path: str | Path) -> None:
        tensors = {
            f"{li}/{ci}/{part}": t.contiguous()
            for li, contents in enumerate(self.layers)
            for ci, qkv in enumerate(contents)
            for part, t in zip("qkv", qkv)
        }
        meta = {"names": "\n".join(self.names), "head_labels": "\n".join(",".join(h) for h in self.head_labels),
                "per_draw": str(self.per_draw)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "AttentionSet":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"attention set {str(path)!r} does not exist")
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        num_layers = 1 + max(int(key.split("/")[0]) for key in tensors)
        layers = []
        for li in range(num_layers):
            count = 1 + max(int(key.split("/")[1]) for key in tensors if key.startswith(f"{li}/"))
            layers.append([tuple(tensors[f"{li}/{ci}/{p}"] for p in "qkv") for ci in range(count)])
        names = meta.get("names", "").split("\n") if meta.get("names") else []
        labels = [row.split(",") for row in meta["head_labels"].split("\n")] if meta.get("head_labels") else []
        return cls(layers, names, labels, int(meta.get("per_draw", 1)))


class Splits(NamedTuple):
    """One benchmark's sets, disjoint by content: train fits stage 1, validation chooses its recipe, held-out
    measures the chosen recipe once. `validation` may be empty (no contents) when no choice is being made."""

    train: AttentionSet
    heldout: AttentionSet
    validation: AttentionSet

    def measured(self, split: str) -> AttentionSet:
        """The set a run is judged on: "heldout" or "validation" (refused when it holds no contents)."""
        if split not in ("heldout", "validation"):
            raise ValueError(f"--split must be heldout or validation, got {split!r}")
        chosen = getattr(self, split)
        if not chosen.layers or not chosen.layers[0]:
            raise ValueError(f"--split {split}: the {split} set has no contents (set --{split}-contents)")
        return chosen
