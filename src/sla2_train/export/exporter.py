"""A training checkpoint → a diffusers folder that WanPipeline.from_pretrained loads (see folder.py for the layout)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import WanTransformer3DModel

from sla2_train.models import ConfigError

from .checkpoint_format import plain_config
from .folder import TRANSFORMER, split_sla2, write_sla2
from .loading import read_weights

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_base(base: Path) -> None:
    if not (base / "model_index.json").is_file() or not (base / TRANSFORMER / "config.json").is_file():
        what = "does not exist" if not base.exists() else "is not a diffusers pipeline folder (model_index.json, transformer/)"
        raise ConfigError(f"--base: {str(base)!r} {what}")


def _architecture(trained: dict[str, Any] | None, base: Path | None) -> dict[str, Any]:
    """The transformer's config: the checkpoint's own, checked against the base pipeline's when both exist."""
    if base is None:
        if trained is None:
            raise ConfigError("the checkpoint records no transformer config; pass --base <the model.path it was trained from>")
        return trained
    from_base = plain_config(json.loads((base / TRANSFORMER / "config.json").read_text()))
    if trained is None:
        return from_base
    diffs = [f"{k}={v!r} (base: {from_base.get(k)!r})" for k, v in plain_config(trained).items() if from_base.get(k) != v]
    if diffs:
        raise ConfigError(f"--base {str(base)!r} holds another architecture than the checkpoint: {', '.join(diffs)}")
    return trained


MODEL_CARD = "README.md"  # describes the base's weights, not the exported ones: not copied


def _copy_base(base: Path, out: Path, symlink: bool) -> None:
    """Every pipeline component but the transformer (text encoder, tokenizer, VAE, scheduler, model_index.json)."""
    for item in sorted(base.iterdir()):
        if item.name in (TRANSFORMER, MODEL_CARD):
            continue
        target = out / item.name
        if symlink:
            target.symlink_to(item.resolve(), target_is_directory=item.is_dir())
        elif item.is_dir():
            shutil.copytree(item, target)
        else:
            shutil.copy2(item, target)


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    base: str | Path | None = None,
    dtype: str | None = None,
    ema: bool = True,
    symlink_base: bool = False,
) -> Path:
    """Write `out` (a new folder): transformer/ (dense weights via save_pretrained, sla2.safetensors, sla2.json),
    and with `base` (a diffusers Wan pipeline folder) the rest of that pipeline. `dtype` casts the dense
    weights (float32, bfloat16, float16; None keeps the checkpoint's); the SLA2 tensors stay fp32. `ema`: the
    EMA weights when the checkpoint has them. Returns `out`."""
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"out: {str(out)!r} exists and is not empty; give a new folder")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    base = None if base is None else Path(base).expanduser()
    if base is not None:
        _check_base(base)
    trained = read_weights(checkpoint, "checkpoint", ema)
    config = _architecture(trained.transformer_config, base)
    dense, sla2 = split_sla2(trained.weights)
    if dtype is not None:
        dense = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in dense.items()}

    # Built on the meta device and filled by assignment: no random init of a 14B model, no second copy.
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    missing, unexpected = model.load_state_dict(dense, strict=False, assign=True)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {str(checkpoint)!r} does not fit its transformer config: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / TRANSFORMER, safe_serialization=True)
    meta = {"attention": trained.attention, "stage": trained.stage, "ema": trained.ema}
    write_sla2(out / TRANSFORMER, sla2, meta)
    if base is not None:
        _copy_base(base, out, symlink_base)
    log.info("exported %s (%s weights, %d SLA2 tensors) to %s", checkpoint, "EMA" if trained.ema else "trained",
             len(sla2), out)
    return out
