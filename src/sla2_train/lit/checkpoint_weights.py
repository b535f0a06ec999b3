"""Start a stage from another stage's weights (stage 2 from stage 1's router and α), without its step count."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sla2_train.models import ConfigError

PREFIX = "model."


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Load the `model.*` weights of a Lightning checkpoint written by SLA2Module (strict: same architecture)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"init_from: no checkpoint file at {str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"init_from {str(path)!r} does not fit this model: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); same model and attention options are needed"
        )
