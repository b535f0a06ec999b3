"""Train and held-out synthetic sets: the same layers (model seeds), disjoint contents (content seeds)."""

from __future__ import annotations

from .sets import AttentionSet
from .synthetic import SyntheticLayer

HELDOUT_OFFSET = 1_000_000  # held-out content seeds start here; train seeds stay below it


def synthetic_sets(
    grid: tuple[int, int, int],
    regimes: list[str],
    num_layers: int = 1,
    train_contents: int = 8,
    heldout_contents: int = 4,
    head_dim: int = 128,
    seed: int = 0,
) -> tuple[AttentionSet, AttentionSet]:
    if train_contents >= HELDOUT_OFFSET:
        raise ValueError(f"train_contents must be < {HELDOUT_OFFSET}, got {train_contents}")
    layers = [SyntheticLayer(grid, regimes, head_dim, model_seed=seed * 1000 + i) for i in range(num_layers)]
    names = [f"synthetic_{i}" for i in range(num_layers)]
    labels = [list(regimes)] * num_layers

    def build(seeds):
        return AttentionSet([[lay.sample(s) for s in seeds] for lay in layers], names, labels)

    train = build(range(1, train_contents + 1))
    heldout = build(range(HELDOUT_OFFSET + 1, HELDOUT_OFFSET + heldout_contents + 1))
    return train, heldout
