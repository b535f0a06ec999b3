"""One loader for trained weights: a Lightning checkpoint from train.py (a file, or trainer=fsdp's sharded folder)
or a folder made by sla2-export.

train.py's `init_from` and eval.py's `ckpt` both come here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sla2_train.models import ConfigError, describe_attention

from .checkpoint_format import TrainedWeights, read_training_checkpoint
from .folder import read_exported
from .sharded_checkpoint import is_sharded_checkpoint, read_sharded_checkpoint

log = logging.getLogger(__name__)

# Options that change what the weights mean without changing their shapes: a router distilled for 97%
# sparsity loads without complaint into a 95% model, so the state dict alone cannot catch the mix-up.
MUST_MATCH = ("variant", "sparsity", "block_q", "block_k", "alpha_mode")


def read_weights(
    path: str | Path, key: str = "init_from", ema: bool = True, into: dict[str, torch.Tensor] | None = None
) -> TrainedWeights:
    """A checkpoint file, a sharded checkpoint folder (trainer=fsdp) or an exported folder; `key` names the
    config key in errors. `into`: the model's state dict, which the sharded reader fills in place."""
    path = Path(path).expanduser()
    if is_sharded_checkpoint(path):
        return read_sharded_checkpoint(path, key, ema, into)
    if path.is_dir():
        return read_exported(path, key)
    return read_training_checkpoint(path, key, ema)


def load_weights(model: nn.Module, path: str | Path, key: str = "init_from", ema: bool = True) -> dict[str, Any]:
    """Load trained weights into `model` (the transformer with its attention installed), strictly: the same
    architecture and the same attention options as recorded beside the weights. EMA weights are preferred
    when the checkpoint has them. Returns the recorded attention description (empty for foreign checkpoints)."""
    return load_trained(model, read_weights(path, key, ema, into=model.state_dict()), path, key)


def load_trained(model: nn.Module, trained: TrainedWeights, path: str | Path, key: str) -> dict[str, Any]:
    """`load_weights` for weights already read from `path` (checked and loaded alike)."""
    try:
        missing, unexpected = model.load_state_dict(trained.weights, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ConfigError(f"{key} {str(path)!r} does not fit this model: {lines[-1]}") from err
    if missing or unexpected:
        raise ConfigError(
            f"{key} {str(path)!r} does not fit this model: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); same model and attention options are needed"
        )
    saved, ours = trained.attention, describe_attention(model)
    diffs = [
        f"{k}={saved[k]!r} (this run: {ours.get(k)!r})" for k in MUST_MATCH if k in saved and saved[k] != ours.get(k)
    ]
    if diffs:
        raise ConfigError(
            f"{key} {str(path)!r} was trained with other attention options: {', '.join(diffs)}; "
            "set attention.* to match the checkpoint"
        )
    log.info("%s: loaded %s weights from %s", key, "EMA" if trained.ema else "trained", path)
    return saved
