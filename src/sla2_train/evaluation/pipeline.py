"""diffusers' WanPipeline from a local Wan2.1 folder, with our (SLA2-swapped) transformer in it."""

from __future__ import annotations

from pathlib import Path

import torch

from sla2_train.models import ConfigError

REQUIRED = ("text_encoder", "tokenizer", "vae")


def check_pipeline_folder(path: str | Path, key: str = "model.path") -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{key}: the local Wan2.1 diffusers folder {str(folder)!r} does not exist")
    missing = [sub for sub in REQUIRED if not (folder / sub).is_dir()]
    if missing:
        raise ConfigError(
            f"{key}: {str(folder)!r} has no {', '.join(s + '/' for s in missing)}: evaluation needs the whole "
            "diffusers folder (transformer/, text_encoder/, tokenizer/, vae/), not the transformer alone"
        )
    return folder


def load_wan_pipeline(folder: Path, transformer, scheduler, dtype: torch.dtype, device: str):
    """Tokenizer and UMT5 (in `dtype`) and the VAE (float32, as Wan decodes) from `folder`, around `transformer`."""
    from diffusers import WanPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel

    from sla2_train.models.vae_loading import load_vae

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder").to(dtype)
    vae = load_vae(folder / "vae", torch.float32)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=scheduler)
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)
