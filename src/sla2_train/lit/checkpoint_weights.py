"""Start a stage from another stage's weights (stage 2 from stage 1's router and α), without its step count."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sla2_train.models import ConfigError, describe_attention

PREFIX = "model."
# Options that change what the weights mean without changing their shapes: a router distilled for 97%
# sparsity loads without complaint into a 95% model, so the state dict alone cannot catch the mix-up.
MUST_MATCH = ("variant", "sparsity", "block_q", "block_k", "alpha_mode")


def load_model_weights(model: nn.Module, path: str | Path, key: str = "init_from") -> dict:
    """Load the `model.*` weights of a Lightning checkpoint written by SLA2Module (strict: same architecture
    and the same attention options, as recorded in the checkpoint's `sla2` entry). `key` names the config key
    in errors. Returns the attention description the checkpoint recorded (empty for foreign checkpoints)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: no checkpoint file at {str(path)!r}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    weights = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ConfigError(f"{key} {str(path)!r} does not fit this model: {lines[-1]}") from err
    if missing or unexpected:
        raise ConfigError(
            f"{key} {str(path)!r} does not fit this model: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); same model and attention options are needed"
        )
    saved = (checkpoint.get("sla2") or {}).get("attention") or {}
    ours = describe_attention(model)
    diffs = [
        f"{k}={saved[k]!r} (this run: {ours.get(k)!r})" for k in MUST_MATCH if k in saved and saved[k] != ours.get(k)
    ]
    if diffs:
        raise ConfigError(
            f"{key} {str(path)!r} was trained with other attention options: {', '.join(diffs)}; "
            "set attention.* to match the checkpoint"
        )
    return saved
