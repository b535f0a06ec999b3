from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(*overrides: str, name: str = "config"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def _inputs(cfg, batch: int = 2, dtype=torch.float32):
    """Fresh random (latents, timestep, text) for the model of `cfg`."""
    c, f, h, w = cfg.model.latent_shape
    latents = torch.randn(batch, c, f, h, w, dtype=dtype)
    timestep = torch.rand(batch, dtype=dtype) * 1000
    text = torch.randn(batch, cfg.model.text_len, cfg.model.text_dim, dtype=dtype)
    return latents, timestep, text


@pytest.fixture
def compose_config():
    """compose_config(*overrides) → the project's Hydra config, composed with the compose API."""
    return _compose


@pytest.fixture
def make_inputs():
    return _inputs


@pytest.fixture
def tiny_cfg():
    return _compose("model=tiny", "logger=none")


@pytest.fixture
def tiny_model(tiny_cfg):
    torch.manual_seed(torch.seed() % 2**31)  # fresh random weights every test
    return instantiate(tiny_cfg.model.transformer)
