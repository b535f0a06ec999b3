"""Train, validation and held-out synthetic sets: the same layers (model seeds), disjoint contents (seeds).

Validation chooses stage 1's recipe; held-out is looked at once, for the chosen recipe only."""

from __future__ import annotations

from .sets import AttentionSet, Splits
from .synthetic import SyntheticLayer

HELDOUT_OFFSET = 1_000_000  # held-out content seeds start here; train seeds stay below it
VALIDATION_OFFSET = 2_000_000  # validation content seeds start here


def synthetic_sets(
    grid: tuple[int, int, int],
    regimes: list[str],
    num_layers: int = 1,
    train_contents: int = 8,
    heldout_contents: int = 4,
    head_dim: int = 128,
    seed: int = 0,
    validation_contents: int = 0,
) -> Splits:
    if train_contents >= HELDOUT_OFFSET:
        raise ValueError(f"train_contents must be < {HELDOUT_OFFSET}, got {train_contents}")
    layers = [SyntheticLayer(grid, regimes, head_dim, model_seed=seed * 1000 + i) for i in range(num_layers)]
    names = [f"synthetic_{i}" for i in range(num_layers)]
    labels = [list(regimes)] * num_layers

    def build(first: int, count: int):
        return AttentionSet([[lay.sample(s) for s in range(first, first + count)] for lay in layers], names, labels)

    return Splits(build(1, train_contents), build(HELDOUT_OFFSET + 1, heldout_contents),
                  build(VALIDATION_OFFSET + 1, validation_contents))
