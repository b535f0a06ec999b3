"""Attention sets from the testbed model (docs/testbed.md) on what it was trained for: rendered clips encoded by its
folder's VAE, their captions by its UMT5, noised at a few flow-matching levels, captured through the project's
capture hook. The split is by content twice over: training contents are `train` scenes, validation and held-out
contents are `heldout` scenes (whose first object is a colour/shape/direction combination never trained on), each
from its own seed."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from sla2_train.commands import CONF_DIR
from sla2_train.data.prep.encoders import EncoderSpec, TextEncoder, VaeEncoder
from sla2_train.models import SLA2Swap
from sla2_train.testbed.captions import caption
from sla2_train.testbed.render import render
from sla2_train.testbed.scenes import sample_scene

from .captures import capture_contents, captured_splits
from .sets import Splits

# caption tokens, as the testbed preset (conf/model/testbed.yaml, text_len) trains and samples with
TEXT_LEN = int(OmegaConf.load(Path(CONF_DIR) / "model" / "testbed.yaml").text_len)


def encoded_scenes(vae: VaeEncoder, text: TextEncoder, split: str, count: int, seed: int,
                   video_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` scenes of `split` from `seed`, rendered at video_size (frames, height, width) → (latents [S, C, F, H,
    W], caption embeddings [S, TEXT_LEN, D], zero after each caption's tokens)."""
    frames, height, width = video_size
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, split, num_frames=frames, aspect=width / height) for _ in range(count)]
    latents = torch.stack([vae(torch.from_numpy(render(s, frames, height, width))) for s in scenes])
    embeds = text([caption(s) for s in scenes])
    texts = torch.zeros(count, TEXT_LEN, embeds[0].shape[-1])
    for i, e in enumerate(embeds):
        texts[i, : len(e)] = e[:TEXT_LEN]
    return latents, texts


def testbed_sets(model, folder: str, video_size: Sequence[int], train_contents: int, heldout_contents: int,
                 sigmas: Sequence[float] = (0.25, 0.5, 0.75), seed: int = 0, validation_contents: int = 0) -> Splits:
    """Train / held-out / validation sets of the testbed transformer `model` loaded from `folder`; SLA2 processors
    are installed for the capture (dense attention runs during it)."""
    spec = EncoderSpec(model_path=folder, max_text_len=TEXT_LEN)
    vae, text = VaeEncoder(spec, torch.device("cpu")), TextEncoder(spec, torch.device("cpu"))
    draws = {"train": ("train", train_contents, seed * 3), "heldout": ("heldout", heldout_contents, seed * 3 + 1),
             "validation": ("heldout", validation_contents, seed * 3 + 2)}
    encoded = {name: encoded_scenes(vae, text, split, n, s, video_size) for name, (split, n, s) in draws.items() if n}
    latent_shape = next(iter(encoded.values()))[0].shape[1:]
    SLA2Swap(variant="sla2").apply(model, latent_shape)
    model.eval()
    captured = {name: capture_contents(model, range(len(lat)), latent_shape, TEXT_LEN, sigmas, lat, txt)
                for name, (lat, txt) in encoded.items()}
    return captured_splits(model.config.num_attention_heads, len(sigmas),
                           *(captured.get(name, []) for name in ("train", "heldout", "validation")))
