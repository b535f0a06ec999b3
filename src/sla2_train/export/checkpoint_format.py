"""What a training checkpoint (the Lightning `.ckpt` train.py writes) holds, and reading its weights.

    checkpoint["state_dict"]          the LightningModule's tensors; the transformer's (SLA2 included) under "model."
    checkpoint["sla2"]                {"stage": name, "attention": describe_attention(model),
                                       "transformer": the transformer's diffusers config}
    checkpoint["ema"]["state_dict"]   optional: exponential-moving-average weights, named as in "state_dict".
                                      It may hold a subset (e.g. trainable weights only): the names it lacks
                                      (buffers, frozen weights) are taken from "state_dict".

Export and `init_from` / eval's `ckpt` read the EMA weights when a checkpoint has them (ema=False: the raw ones).
With trainer=fsdp the checkpoint is a folder holding the same content in shards (sharded_checkpoint.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from sla2_train.models import ConfigError, describe_attention

PREFIX = "model."
META_KEY = "sla2"
EMA_KEY = "ema"


@dataclass
class TrainedWeights:
    """A trained transformer's tensors (state-dict names of the transformer, SLA2 processors included), how its
    attention was built (describe_attention's dict) and its diffusers config (None when the source lacks it)."""

    weights: dict[str, torch.Tensor]
    attention: dict[str, Any]
    transformer_config: dict[str, Any] | None
    stage: str | None
    ema: bool


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers config without its bookkeeping entries (names starting with "_"), tuples as lists: the form
    config.json holds, so configs from checkpoints and from folders compare equal."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


def transformer_config(model: nn.Module) -> dict[str, Any]:
    return plain_config(model.config)


def checkpoint_metadata(model: nn.Module, stage: str) -> dict[str, Any]:
    """checkpoint["sla2"]: how the attention was built and trained, and the transformer's architecture, so a
    checkpoint alone can be exported and loaded without the config that trained it."""
    return {"stage": stage, "attention": describe_attention(model), "transformer": transformer_config(model)}


def read_training_checkpoint(path: str | Path, key: str = "init_from", ema: bool = True) -> TrainedWeights:
    """The transformer weights of a Lightning checkpoint written by SLA2Module (`key` names the config key or
    argument in errors). Loaded with weights_only=True: nothing in the file is executed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: no checkpoint file at {str(path)!r}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated download, or a file that is no checkpoint at all
        raise ConfigError(f"{key}: {str(path)!r} is not a readable PyTorch checkpoint ({type(err).__name__})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{key}: {str(path)!r} has no 'state_dict'; expected a Lightning checkpoint from train.py")
    return trained_weights(dict(checkpoint["state_dict"]), checkpoint, path, key, ema)


def trained_weights(
    state: dict[str, torch.Tensor], checkpoint: Mapping[str, Any], path: Path, key: str, ema: bool
) -> TrainedWeights:
    """The transformer's weights from a LightningModule state dict (`state`) and the rest of its checkpoint
    (META_KEY, EMA_KEY), the EMA weights in place of the raw ones when `ema` and the checkpoint has them."""
    averaged = (checkpoint.get(EMA_KEY) or {}).get("state_dict") if ema else None
    if averaged:
        unknown = sorted(set(averaged) - set(state))
        if unknown:
            raise ConfigError(f"{key}: {str(path)!r} has EMA weights for names the model lacks, e.g. {unknown[:2]}")
        state = {**state, **averaged}
    meta = checkpoint.get(META_KEY) or {}
    return TrainedWeights(
        weights={k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)},
        attention=dict(meta.get("attention") or {}),
        transformer_config=meta.get("transformer"),
        stage=meta.get("stage"),
        ema=bool(averaged),
    )
