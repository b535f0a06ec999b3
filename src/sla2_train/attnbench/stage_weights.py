"""Trained stage-1 and stage-2 weights for the attention table: a training checkpoint or an exported folder per
sparsity, each checked against the model before anything is sampled.

A checkpoint records the sparsity it was trained for (one stage-1 run per target sparsity), so the table pairs
each with its own sparsity and refuses one trained for a sparsity it does not measure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from sla2_train.attention import SLA2Attention
from sla2_train.export.checkpoint_format import TrainedWeights, transformer_config
from sla2_train.export.folder import split_sla2
from sla2_train.export.loading import load_trained, read_weights
from sla2_train.models import ConfigError, SLA2Swap, sla2_processors

# The options that shape the SLA2 parameters of a checkpoint; the table installs them before loading.
SHAPING = ("variant", "sparsity", "block_q", "block_k", "alpha_mode")


@dataclass
class StageWeights:
    key: str  # the config key the user gave the path under (stage1 / stage2), for errors
    path: str
    sparsity: float
    attention: dict


def as_paths(value) -> list[str]:
    """One path or a list of paths (null: none)."""
    if value is None:
        return []
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


def _check_architecture(model: nn.Module, trained: TrainedWeights, key: str, path: str) -> None:
    saved, ours = trained.transformer_config, transformer_config(model)
    if saved is None:
        return  # a foreign checkpoint: strict loading still catches every shape that differs
    shared = sorted(set(saved) & set(ours))
    diffs = [f"{k}={saved[k]!r} (model.path: {ours[k]!r})" for k in shared if saved[k] != ours[k]]
    if diffs:
        raise ConfigError(f"{key}: {path!r} is a checkpoint of another architecture than model.path: "
                          f"{', '.join(diffs[:4])}")


def read_stage(value, key: str, model: nn.Module, sparsities: Sequence[float], block_q: int,
               block_k: int) -> dict[float, StageWeights]:
    """{measured sparsity: its checkpoint} from the paths under `key`; ConfigError naming `key` for a path that is
    missing, not SLA2, of another architecture or block size, or trained for a sparsity not measured."""
    found: dict[float, StageWeights] = {}
    for path in as_paths(value):
        trained = read_weights(path, key)
        _check_architecture(model, trained, key, path)
        att = trained.attention
        if att.get("variant") != "sla2":
            raise ConfigError(f"{key}: {path!r} holds attention variant {att.get('variant')!r}, not trained SLA2")
        if (att.get("block_q"), att.get("block_k")) != (block_q, block_k):
            raise ConfigError(f"{key}: {path!r} was trained with blocks {att.get('block_q')}/{att.get('block_k')}, "
                              f"the model preset measures {block_q}/{block_k} (model.attn_block_q/k)")
        match = [s for s in sparsities if abs(s - float(att.get("sparsity", -1))) < 1e-9]
        if not match:
            raise ConfigError(f"{key}: {path!r} was trained for sparsity {att.get('sparsity')}, which is not in "
                              f"sparsities {list(sparsities)}")
        if match[0] in found:
            raise ConfigError(f"{key}: two checkpoints for sparsity {match[0]}: {found[match[0]].path!r} and {path!r}")
        found[match[0]] = StageWeights(key, path, match[0], dict(att))
    return found


def install(model: nn.Module, weights: StageWeights, seq_len: int,
            trained: TrainedWeights | None = None) -> list[SLA2Attention]:
    """Load `weights` into `model` with SLA2 installed as they were trained (strictly: every weight, the same
    attention options); returns the SLA2 layers in block order, in float32 on the model's device (bf16 router
    projections would reorder near-tied blocks)."""
    options = {k: weights.attention[k] for k in SHAPING if weights.attention.get(k) is not None}
    SLA2Swap(**options).install(model, seq_len)
    trained = trained or read_weights(weights.path, weights.key)
    load_trained(model, trained, weights.path, weights.key)
    device = next(model.parameters()).device
    return [p.attention.float().to(device) for p in sla2_processors(model)]


def stage1_layers(model: nn.Module, weights: StageWeights, seq_len: int) -> list[SLA2Attention]:
    """The router and α of a stage-1 checkpoint. Stage 1 trains nothing else, so the checkpoint's transformer
    weights must be model.path's own (loading them then changes nothing); a checkpoint that changed them is
    stage 2's and is refused, since the table's dense trajectories come from model.path."""
    trained = read_weights(weights.path, weights.key)
    dense, _ = split_sla2(trained.weights)
    own = model.state_dict()
    changed = [k for k, v in dense.items() if k in own and not torch.equal(v.to(own[k].dtype), own[k].cpu())]
    if changed:
        raise ConfigError(f"{weights.key}: {weights.path!r} changed {len(changed)} transformer weights of "
                          f"model.path (e.g. {changed[0]}): stage 1 trains only the router and α; give a stage-2 "
                          "checkpoint as stage2")
    return install(model, weights, seq_len, trained)
