"""The exported folder: a diffusers Wan pipeline (or transformer) folder plus the SLA2 state.

    <out>/model_index.json, text_encoder/, tokenizer/, vae/, scheduler/   copied from the base pipeline (--base)
    <out>/transformer/config.json, diffusion_pytorch_model*.safetensors   the dense transformer (save_pretrained)
    <out>/transformer/sla2.safetensors   router projections and α of every blocks[i].attn1, named as in the
                                         transformer's state dict with SLA2 installed (fp32)
    <out>/transformer/sla2.json          {"attention": variant, sparsity, block_q, block_k, alpha_mode, tau, quant,
                                          ...; "stage": ...; "ema": whether the weights are the EMA ones}

The dense weights hold no SLA2 tensor, so stock diffusers loads the folder as a dense Wan model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sla2_train.models import ConfigError

from .checkpoint_format import TrainedWeights, plain_config

TRANSFORMER = "transformer"
SLA2_WEIGHTS = "sla2.safetensors"
SLA2_CONFIG = "sla2.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = WEIGHTS + ".index.json"
# Where SLA2 lives in the transformer's state dict: the processor module set on each self-attention.
SLA2_MARK = ".attn1.processor."


def split_sla2(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(dense transformer weights, SLA2 processor weights)."""
    sla2 = {k: v for k, v in weights.items() if SLA2_MARK in k}
    return {k: v for k, v in weights.items() if k not in sla2}, sla2


def transformer_folder(path: str | Path, key: str) -> Path:
    """The folder holding sla2.json: `path` itself or its transformer/ subfolder."""
    path = Path(path).expanduser()
    for folder in (path, path / TRANSFORMER):
        if (folder / SLA2_CONFIG).is_file():
            return folder
    what = "does not exist" if not path.exists() else f"holds no {SLA2_CONFIG} (nor {TRANSFORMER}/{SLA2_CONFIG})"
    raise ConfigError(f"{key}: the exported SLA2 folder {str(path)!r} {what}; make one with sla2-export")


def write_sla2(folder: Path, sla2: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    # fp32 whatever the transformer's dtype: bf16 router projections would reorder near-tied blocks.
    save_file({k: v.detach().float().contiguous() for k, v in sla2.items()}, str(folder / SLA2_WEIGHTS))
    (folder / SLA2_CONFIG).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_sla2(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return load_file(str(folder / SLA2_WEIGHTS)), json.loads((folder / SLA2_CONFIG).read_text())


def _read_dense(folder: Path, key: str) -> dict[str, torch.Tensor]:
    if (folder / WEIGHTS).is_file():
        return load_file(str(folder / WEIGHTS))
    if (folder / WEIGHTS_INDEX).is_file():  # save_pretrained shards large models
        shards = sorted(set(json.loads((folder / WEIGHTS_INDEX).read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(folder / shard)).items()}
    raise ConfigError(f"{key}: {str(folder)!r} has {SLA2_CONFIG} but no {WEIGHTS} (nor {WEIGHTS_INDEX})")


def read_exported(path: str | Path, key: str = "init_from") -> TrainedWeights:
    """The weights of an exported folder (the pipeline root or its transformer/), in the same form as a
    training checkpoint's."""
    folder = transformer_folder(path, key)
    sla2, meta = read_sla2(folder)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else None
    return TrainedWeights(
        weights={**_read_dense(folder, key), **sla2},
        attention=dict(meta.get("attention") or {}),
        transformer_config=None if config is None else plain_config(config),
        stage=meta.get("stage"),
        ema=bool(meta.get("ema")),
    )
