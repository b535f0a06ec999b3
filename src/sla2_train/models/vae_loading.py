"""The one place that loads a model folder's vae/: Wan's AutoencoderKLWan or the testbed's PixelPatchVAE.

The class comes from the folder's config.json (`_class_name`), as diffusers' pipelines decide it; both classes
have the interface the data preparation and WanPipeline use (models/pixel_vae.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import ConfigError
from .pixel_vae import PixelPatchVAE


def _classes() -> dict:
    from diffusers import AutoencoderKLWan

    return {"AutoencoderKLWan": AutoencoderKLWan, "PixelPatchVAE": PixelPatchVAE}


def load_vae(folder: str | Path, dtype: torch.dtype = torch.float32):
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        raise ConfigError(f"VAE folder {str(folder)!r} has no config.json")
    name = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    classes = _classes()
    if name not in classes:
        raise ConfigError(f"VAE folder {str(folder)!r}: _class_name {name!r} is not one of {sorted(classes)}")
    return classes[name].from_pretrained(folder, torch_dtype=dtype)
