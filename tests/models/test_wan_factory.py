"""Building Wan from the model presets and loading it from local diffusers folders."""

import inspect

import pytest
import torch
from diffusers import WanTransformer3DModel
from hydra.utils import instantiate

from sla2_train.models import ConfigError, token_count, wan_transformer

WAN_ARGS = set(inspect.signature(WanTransformer3DModel.__init__).parameters) - {"self"}

# The published configs (Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers transformer/config.json), written out here
# independently of conf/model so a typo in either shows up.
REAL = {
    "wan2_1": dict(num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, in_channels=16,
                   out_channels=16, text_dim=4096, freq_dim=256, patch_size=[1, 2, 2],
                   qk_norm="rms_norm_across_heads", cross_attn_norm=True, eps=1e-6, rope_max_seq_len=1024),
    "wan2_1_14b": dict(num_layers=40, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824,
                       in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, patch_size=[1, 2, 2],
                       qk_norm="rms_norm_across_heads", cross_attn_norm=True, eps=1e-6, rope_max_seq_len=1024),
}
PARAMS = {"wan2_1": (1.3e9, 1.5e9), "wan2_1_14b": (13.5e9, 14.8e9)}


@pytest.mark.parametrize("preset", ["wan2_1", "wan2_1_14b"])
def test_real_presets_match_the_published_configs(compose_config, preset):
    cfg = compose_config(f"model={preset}")
    arch = dict(instantiate(cfg.model.transformer.arch, _convert_="all"))
    assert set(arch) <= WAN_ARGS
    assert arch == REAL[preset]
    with torch.device("meta"):  # the real architecture, no memory
        model = WanTransformer3DModel(**arch)
    n = sum(p.numel() for p in model.parameters())
    assert PARAMS[preset][0] < n < PARAMS[preset][1], n


def test_wan2_1_token_count_is_the_480p_81_frame_length(compose_config):
    cfg = compose_config("model=wan2_1")
    with torch.device("meta"):
        model = WanTransformer3DModel(**dict(instantiate(cfg.model.transformer.arch, _convert_="all")))
    assert token_count(model, cfg.model.latent_shape) == 21 * 30 * 52


def test_tiny_preset_is_ragged_for_its_blocks(tiny_cfg, tiny_model):
    n = token_count(tiny_model, tiny_cfg.model.latent_shape)
    assert n == 189
    assert n % tiny_cfg.model.attn_block_q and n % tiny_cfg.model.attn_block_k


@pytest.mark.parametrize("layout", ["transformer_folder", "pipeline_folder"])
def test_save_pretrained_then_load_from_local_folder(tmp_path, tiny_cfg, tiny_model, make_inputs, layout):
    folder = tmp_path / "wan"
    tiny_model.save_pretrained(folder / "transformer" if layout == "pipeline_folder" else folder)
    arch = instantiate(tiny_cfg.model.transformer.arch, _convert_="all")
    loaded = wan_transformer(arch=arch, path=str(folder))
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x, t, text = make_inputs(tiny_cfg)
    with torch.no_grad():
        assert torch.equal(tiny_model(x, t, text).sample, loaded(x, t, text).sample)


def test_missing_model_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        wan_transformer(path=str(tmp_path / "no-such-model"))
    msg = str(err.value)
    assert "no-such-model" in msg and "does not exist" in msg and "\n" not in msg


def test_folder_without_config_is_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither config.json"):
        wan_transformer(path=str(tmp_path / "empty"))


def test_folder_of_another_architecture_is_rejected(tmp_path, tiny_cfg, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    arch = dict(instantiate(tiny_cfg.model.transformer.arch, _convert_="all"), num_layers=3)
    with pytest.raises(ConfigError, match="num_layers=2"):
        wan_transformer(arch=arch, path=str(tmp_path / "m"))


def test_unknown_architecture_key_is_named():
    with pytest.raises(ConfigError, match="num_layerz"):
        wan_transformer(arch={"num_layerz": 2})


def test_latents_that_do_not_fit_the_model_are_rejected(tiny_model):
    with pytest.raises(ConfigError, match="channels"):
        token_count(tiny_model, [3, 3, 14, 18])
    with pytest.raises(ConfigError, match="patch_size"):
        token_count(tiny_model, [4, 3, 15, 18])
