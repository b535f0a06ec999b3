"""Wan's VAE and UMT5 text encoder, loaded from local diffusers/transformers folders, used exactly as Wan does."""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EncoderSpec:
    model_path: str | None = None         # a local diffusers Wan folder holding vae/, text_encoder/, tokenizer/
    vae_path: str | None = None           # overrides: a component folder each (null = <model_path>/<name>)
    text_encoder_path: str | None = None
    tokenizer_path: str | None = None
    device: str = "auto"                  # auto = cuda:$LOCAL_RANK when CUDA is available, else cpu
    vae_dtype: str = "float32"
    text_dtype: str = "bfloat16"
    max_text_len: int = 512               # Wan's UMT5 setup
    vae_tiling: bool = False              # lower VAE memory for large frames, slower
    sample_posterior: bool = False        # False: store the posterior mean (deterministic shards)


def component_dir(explicit: str | None, root: str | None, name: str) -> Path:
    """The folder of one model component, with one clear error when it is missing."""
    if explicit is None and root is None:
        raise ValueError(f"no {name} folder: set encoders.model_path (a local Wan diffusers folder) or encoders.{name}_path")
    path = Path(explicit if explicit is not None else os.path.join(root, name)).expanduser()
    marker = "tokenizer_config.json" if name == "tokenizer" else "config.json"
    if not (path / marker).is_file():
        raise FileNotFoundError(f"{name} folder not found or incomplete: {path} (expected {marker} in it)")
    return path


def resolve_device(device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


class VaeEncoder:
    """uint8 clip [F, H, W, 3] → normalised latents [C, 1 + (F-1)/t, H/s, W/s] (float32, on CPU); Wan: t 4, s 8."""

    def __init__(self, spec: EncoderSpec, device: torch.device):
        from sla2_train.models.vae_loading import load_vae

        self.device, self.dtype = device, _dtype(spec.vae_dtype)
        path = component_dir(spec.vae_path, spec.model_path, "vae")
        self.vae = load_vae(path, self.dtype).to(device).eval().requires_grad_(False)
        if spec.vae_tiling and hasattr(self.vae, "enable_tiling"):
            self.vae.enable_tiling()
        self.sample = spec.sample_posterior
        z = self.vae.config.z_dim
        # Wan's normalisation: the pipeline decodes with z = latents * std + mean, so training data is (z - mean) / std.
        self.mean = torch.tensor(self.vae.config.latents_mean, dtype=torch.float32).view(z, 1, 1, 1)
        self.std = torch.tensor(self.vae.config.latents_std, dtype=torch.float32).view(z, 1, 1, 1)

    @torch.no_grad()
    def __call__(self, clip: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # contiguous: a permuted (channels-last) input sends conv3d down a path ~30x slower on CPU.
        x = (clip.to(self.device).permute(3, 0, 1, 2).unsqueeze(0).to(self.dtype) / 127.5 - 1.0).contiguous()
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if self.sample else dist.mode()
        return (z[0].float().cpu() - self.mean) / self.std


def prompt_clean(text: str) -> str:
    """The caption cleaning of diffusers' WanPipeline (ftfy when installed, HTML unescape, whitespace)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class TextEncoder:
    """Captions → UMT5 last hidden states, one [L_i, D] tensor per caption, unpadded (L_i = true token count).

    Wan pads to 512 and keeps the first L_i rows (zeros after): padding to the longest caption instead gives
    the same rows, because padded positions are masked out of the encoder's attention.
    """

    def __init__(self, spec: EncoderSpec, device: torch.device):
        from transformers import AutoTokenizer, UMT5EncoderModel

        self.device, self.max_len = device, spec.max_text_len
        enc_path = component_dir(spec.text_encoder_path, spec.model_path, "text_encoder")
        tok_path = component_dir(spec.tokenizer_path, spec.model_path, "tokenizer")
        self.tokenizer = AutoTokenizer.from_pretrained(tok_path)
        self.model = UMT5EncoderModel.from_pretrained(enc_path, dtype=_dtype(spec.text_dtype))
        self.model = self.model.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> list[torch.Tensor]:
        tokens = self.tokenizer(
            [prompt_clean(c) for c in captions],
            padding="longest",
            max_length=self.max_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device)
        hidden = self.model(tokens.input_ids.to(self.device), mask).last_hidden_state
        lengths = mask.gt(0).sum(dim=1).tolist()
        return [hidden[i, :n].float().cpu() for i, n in enumerate(lengths)]
