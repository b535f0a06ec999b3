"""A lossless pixel-space stand-in for Wan's VAE: space-to-depth by `patch` (no weights), with Wan's interface.

The testbed model (docs/testbed.md) generates in pixel space: a learned VAE would have to be trained first and its
reconstruction error would blur the question the testbed answers (does sparse attention keep what dense
attention generates?). Folding `patch`×`patch` pixels into channels gives Wan-like latents (C = 3·patch², H/patch,
W/patch; time is not compressed) that decode exactly. Everything that reads a VAE — data preparation,
WanPipeline's decoding, evaluation — sees the same attributes and calls as AutoencoderKLWan:
config.z_dim / latents_mean / latents_std / scale_factor_spatial / scale_factor_temporal, encode(x).latent_dist
with mode() and sample(), and decode(z) returning a `sample`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


@dataclass
class _Exact:
    """The latent "distribution" of a deterministic encoder: every draw is the encoding itself."""

    value: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.value

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.value


@dataclass
class _Encoded:
    latent_dist: _Exact


@dataclass
class _Decoded:
    sample: torch.Tensor


class PixelPatchVAE(ModelMixin, ConfigMixin):
    """[B, 3, F, H, W] in [-1, 1] ↔ [B, 3·patch², F, H/patch, W/patch]; channel c·patch² + i·patch + j holds
    colour c of pixel (i, j) of each patch."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, patch: int = 4, latents_mean: list[float] | None = None,
                 latents_std: list[float] | None = None, scale_factor_temporal: int = 1,
                 scale_factor_spatial: int | None = None, z_dim: int | None = None):
        super().__init__()
        z = 3 * patch * patch
        if scale_factor_temporal != 1 or scale_factor_spatial not in (None, patch) or z_dim not in (None, z):
            raise ValueError(f"PixelPatchVAE(patch={patch}) has z_dim {z}, scale_factor_spatial {patch} and "
                             f"scale_factor_temporal 1; its config says {z_dim}, {scale_factor_spatial}, "
                             f"{scale_factor_temporal}")
        mean = [0.0] * z if latents_mean is None else list(latents_mean)
        std = [1.0] * z if latents_std is None else list(latents_std)
        if len(mean) != z or len(std) != z or min(std) <= 0:
            raise ValueError(f"PixelPatchVAE(patch={patch}): latents_mean and latents_std need {z} entries "
                             f"(std > 0), got {len(mean)} and {len(std)}")
        # The fields WanPipeline and our encoders read, filled in so a saved config is complete.
        self.register_to_config(z_dim=z, scale_factor_spatial=patch, latents_mean=mean, latents_std=std)
        # A buffer gives the module a dtype and device (WanPipeline casts latents to vae.dtype).
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None,
                        torch_dtype: torch.dtype | None = None, **kwargs):
        """The folder holds config.json alone (there are no weights); other loading options do not apply."""
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, local_files_only=True)
        model = cls.from_config(config)
        # nn.Module's own cast: ModelMixin.to warns about fp32-kept modules, and this class has none.
        return model._apply(lambda t: t.to(torch_dtype)) if torch_dtype is not None else model

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        b, c, f, h, w = x.shape
        p = self.config.patch
        if c != 3 or h % p or w % p:
            raise ValueError(f"PixelPatchVAE.encode takes [B, 3, F, H, W] with H and W multiples of {p}, got {list(x.shape)}")
        z = x.reshape(b, 3, f, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5).reshape(b, 3 * p * p, f, h // p, w // p)
        out = _Encoded(_Exact(z))
        return out if return_dict else (out.latent_dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        b, zc, f, hp, wp = z.shape
        p = self.config.patch
        if zc != 3 * p * p:
            raise ValueError(f"PixelPatchVAE.decode takes {3 * p * p} channels, got {list(z.shape)}")
        x = z.reshape(b, 3, p, p, f, hp, wp).permute(0, 1, 4, 5, 2, 6, 3).reshape(b, 3, f, hp * p, wp * p)
        x = x.clamp(-1.0, 1.0)  # as a decoder's output range: generated values outside it are not colours
        return _Decoded(x) if return_dict else (x,)
