"""Start a stage from another stage's weights (stage 2 from stage 1's router and α), without its step count."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sla2_train.export.loading import load_weights


def load_model_weights(model: nn.Module, path: str | Path, key: str = "init_from") -> dict:
    """Load a Lightning checkpoint from train.py (its EMA weights when it has them) or a folder made by
    sla2-export into `model`, strictly: same architecture and attention options. `key` names the config key in
    errors. Returns the attention description recorded beside the weights (empty for foreign checkpoints)."""
    return load_weights(model, path, key)
