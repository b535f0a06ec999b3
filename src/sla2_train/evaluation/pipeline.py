"""diffusers' WanPipeline from a local Wan2.1 folder, with our (SLA2-swapped) transformer in it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from sla2_train.models import ConfigError

REQUIRED = ("text_encoder", "tokenizer", "vae")
# WanPipeline's order of the transformer calls of one step under classifier-free guidance: the prompt's, then the
# negative prompt's
GUIDANCE_BRANCHES = ("cond", "uncond")


def forwards_per_step(guidance_scale: float) -> int:
    return 2 if guidance_scale > 1.0 else 1  # WanPipeline calls the transformer twice under guidance


class _NoTemporalRounding(logging.Filter):
    """WanPipeline assumes a VAE that compresses time and warns that `num_frames - 1` is not divisible by 1 on
    every video of a VAE that does not (PixelPatchVAE): the count is used as given, there is nothing to say."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has to be divisible by 1." not in record.getMessage()


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
    wan_log = logging.getLogger(WanPipeline.__module__)
    if pipe.vae_scale_factor_temporal == 1 and not any(isinstance(f, _NoTemporalRounding) for f in wan_log.filters):
        wan_log.addFilter(_NoTemporalRounding())
    return pipe.to(device)


def inference_dtype(device: str, dtype: str) -> torch.dtype:
    """`dtype` by name; "auto": bfloat16 on CUDA (SLA2 on the Triton kernels, dense on SDPA), float32 on CPU."""
    name = dtype if dtype != "auto" else ("bfloat16" if str(device).startswith("cuda") else "float32")
    return getattr(torch, name)


def video_size(pipe, latent_shape) -> dict[str, int]:
    """WanPipeline's num_frames / height / width for latents [C, F, H, W] through the folder's VAE."""
    c, f, h, w = latent_shape
    return {"num_frames": (f - 1) * pipe.vae_scale_factor_temporal + 1,
            "height": h * pipe.vae_scale_factor_spatial, "width": w * pipe.vae_scale_factor_spatial}


def initial_noise(latent_shape, seed: int, device) -> torch.Tensor:
    """The latent noise of one video: drawn on the CPU from `seed`, so it does not depend on the device (dense and
    every SLA2 setting start from the same noise)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((1, *latent_shape), generator=g).to(device)
