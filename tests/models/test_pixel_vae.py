"""PixelPatchVAE: an exact space-to-depth with AutoencoderKLWan's interface, loaded by the one VAE loader."""

import json

import pytest
import torch

from sla2_train.models import ConfigError
from sla2_train.models.pixel_vae import PixelPatchVAE
from sla2_train.models.vae_loading import load_vae


@pytest.mark.parametrize("patch,shape", [(4, (2, 3, 5, 16, 24)), (2, (1, 3, 1, 6, 10)), (8, (1, 3, 3, 8, 16))])
def test_roundtrip_is_exact_and_channels_are_pixels(patch, shape):
    vae = PixelPatchVAE(patch=patch)
    x = torch.rand(shape) * 2 - 1
    z = vae.encode(x).latent_dist.mode()
    b, _, f, h, w = shape
    assert z.shape == (b, 3 * patch * patch, f, h // patch, w // patch)
    assert torch.equal(vae.decode(z).sample, x)
    # channel c·p² + i·p + j at latent (y, x) is colour c of pixel (y·p + i, x·p + j)
    c, i, j, y, xx = 2, patch - 1, 0, h // patch - 1, 1
    assert z[0, c * patch * patch + i * patch + j, f - 1, y, xx] == x[0, c, f - 1, y * patch + i, xx * patch + j]
    assert torch.equal(vae.encode(x).latent_dist.sample(torch.Generator()), z)


def test_decode_clamps_to_the_pixel_range():
    vae = PixelPatchVAE(patch=2)
    z = torch.randn(1, 12, 2, 3, 3) * 5
    x = vae.decode(z, return_dict=False)[0]
    assert x.min() >= -1 and x.max() <= 1 and (x.abs() == 1).any()


def test_config_is_complete_and_loads_through_the_vae_loader(tmp_path):
    vae = PixelPatchVAE(patch=4, latents_mean=[0.1] * 48, latents_std=[0.5] * 48)
    vae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["z_dim"] == 48 and config["scale_factor_spatial"] == 4 and config["scale_factor_temporal"] == 1
    loaded = load_vae(tmp_path, torch.bfloat16)
    assert isinstance(loaded, PixelPatchVAE) and loaded.dtype == torch.bfloat16
    assert loaded.config.latents_std == [0.5] * 48


def test_bad_configs_and_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="48 entries"):
        PixelPatchVAE(patch=4, latents_mean=[0.0] * 3)
    with pytest.raises(ValueError, match="scale_factor_temporal"):
        PixelPatchVAE(patch=4, scale_factor_temporal=4)
    with pytest.raises(ValueError, match="multiples of 4"):
        PixelPatchVAE(patch=4).encode(torch.zeros(1, 3, 1, 6, 8))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "SomethingElse"}))
    with pytest.raises(ConfigError, match="SomethingElse"):
        load_vae(tmp_path)
