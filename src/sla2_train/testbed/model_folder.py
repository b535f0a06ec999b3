"""The testbed's untrained diffusers folder: tokenizer, UMT5, PixelPatchVAE, scheduler, random transformer.

Training (experiment=testbed_pretrain) prepares its data with this folder's text encoder and VAE and starts
from its random transformer (model.path); sla2-export then writes the trained transformer over a copy of it.
Everything is deterministic from the seed, so the folder can be rebuilt anywhere (it is small: the UMT5 is
2 layers of width 256 over the caption words, frozen at its random initialisation — the DiT learns to read it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from sla2_train.models.pixel_vae import PixelPatchVAE
from sla2_train.models.wan_factory import check_arch


def latent_statistics(clips: Iterable[np.ndarray], patch: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of PixelPatchVAE latents over `clips` (uint8 [F, H, W, 3]).

    Latent channel c·patch² + i·patch + j holds colour c, so the statistics are per colour, repeated."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for clip in clips:
        x = clip.reshape(-1, 3).astype(np.float64) / 127.5 - 1.0
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += x.shape[0]
    if count == 0:
        raise ValueError("latent_statistics needs at least one clip")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 1e-6))
    per = patch * patch
    return [float(m) for m in mean.repeat(per)], [float(s) for s in std.repeat(per)]


EMPTY_PROMPT = "empty_prompt.safetensors"


class TestbedFolder:
    """The recipe of the untrained testbed folder (conf/testbed_model.yaml)."""

    __test__ = False  # not a pytest class

    def __init__(self, arch: Mapping[str, Any], text_encoder: Mapping[str, Any], patch: int = 4,
                 stats_clips: int = 64, num_frames: int = 17, height: int = 128, width: int = 256,
                 flow_shift: float = 3.0, seed: int = 0):
        self.arch, self.text_encoder = check_arch(arch), dict(text_encoder)
        self.patch, self.stats_clips, self.seed = patch, stats_clips, seed
        self.size = (num_frames, height, width)
        self.flow_shift = flow_shift

    def _statistics(self) -> tuple[list[float], list[float]]:
        from .render import render
        from .scenes import sample_scene

        rng = np.random.default_rng(self.seed)
        frames, height, width = self.size
        clips = (render(sample_scene(rng, "train", num_frames=frames, aspect=width / height), frames, height, width)
                 for _ in range(self.stats_clips))
        return latent_statistics(clips, self.patch)

    @staticmethod
    def _save_empty_prompt(folder: Path) -> None:
        """The text encoder's embedding of "" (EMPTY_PROMPT), as data preparation stores captions: caption
        dropout trains on it, so the unconditional branch is exactly WanPipeline's negative_prompt=""."""
        from safetensors.torch import save_file

        from sla2_train.data.prep.encoders import EncoderSpec, TextEncoder

        (embeds,) = TextEncoder(EncoderSpec(model_path=str(folder), device="cpu"), torch.device("cpu"))([""])
        save_file({"text_embeds": embeds.to(torch.bfloat16).contiguous()}, str(folder / EMPTY_PROMPT))

    def build(self, out: str | Path, overwrite: bool = False) -> Path:
        from diffusers import UniPCMultistepScheduler, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        from sla2_train.evaluation.random_folder import save_word_tokenizer

        from .captions import VOCABULARY

        out = Path(out)
        if out.exists():
            if not overwrite:
                raise FileExistsError(f"out: {str(out)!r} exists (pass overwrite=true to replace it)")
            shutil.rmtree(out)
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        torch.manual_seed(self.seed)
        vocab_size = save_word_tokenizer(tmp / "tokenizer", " ".join(VOCABULARY))
        UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **self.text_encoder)).save_pretrained(tmp / "text_encoder")
        mean, std = self._statistics()
        PixelPatchVAE(patch=self.patch, latents_mean=mean, latents_std=std).save_pretrained(tmp / "vae")
        WanTransformer3DModel(**self.arch).save_pretrained(tmp / "transformer")
        UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                flow_shift=self.flow_shift).save_pretrained(tmp / "scheduler")
        self._save_empty_prompt(tmp)
        (tmp / "model_index.json").write_text(json.dumps({
            "_class_name": "WanPipeline",
            "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
            "transformer": ["diffusers", "WanTransformer3DModel"],
            # diffusers imports a component's class from the named module: WanPipeline.from_pretrained loads it.
            "vae": ["sla2_train.models.pixel_vae", "PixelPatchVAE"],
        }, indent=1) + "\n")
        tmp.rename(out)
        return out
