"""Tiny random backbones, saved in the formats the real weights come in, for the metrics' loading code."""

from pathlib import Path

import pytest
import torch
from torch import nn

VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_WIDTHS = {0: 4, 2: 4, 5: 6, 7: 6, 10: 8, 12: 8, 14: 8, 17: 8, 19: 8, 21: 8, 24: 8, 26: 8, 28: 8}
VGG_TAP_WIDTHS = (4, 6, 8, 8, 8)


@pytest.fixture(scope="session")
def backbones(tmp_path_factory) -> dict[str, Path]:
    """{config key under backbones.: path} for every metric's backbone."""
    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    from sla2_train.evaluation.random_folder import save_word_tokenizer

    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    out = {}

    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32), add_pooling_layer=False).save_pretrained(root / "dino")
    out["dino"] = root / "dino"

    for name in ("clip", "clip_large"):
        clip = CLIPModel(CLIPConfig(
            text_config=dict(vocab_size=400, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=32, eos_token_id=1, pad_token_id=0,
                             bos_token_id=1),
            vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                               num_hidden_layers=1, num_attention_heads=2),
            projection_dim=12))
        clip.save_pretrained(root / name)
        assert save_word_tokenizer(root / name) <= 400
        out[name] = root / name

    # The improved LAION predictor's key layout (layers.0/2/4/6/7), a bias-only last layer making the answer known.
    head = nn.Sequential(nn.Linear(12, 8), nn.Dropout(), nn.Linear(8, 4), nn.Dropout(), nn.Linear(4, 3),
                         nn.Dropout(), nn.Linear(3, 2), nn.Linear(2, 1))
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, root / "aesthetic.pth")
    out["aesthetic_head"] = root / "aesthetic.pth"

    class Brightness(nn.Module):  # a "no-reference IQA" whose score is 100 × mean brightness
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 100 * x.mean(dim=(1, 2, 3))

    class Blend(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a + b) / 2

    torch.jit.save(torch.jit.script(Brightness()), str(root / "iqa.pt"))
    torch.jit.save(torch.jit.script(Blend()), str(root / "interp.pt"))
    out["iqa"], out["interpolator"] = root / "iqa.pt", root / "interp.pt"

    vgg, c_in = {}, 3
    for i in VGG_CONVS:
        vgg[f"features.{i}.weight"] = torch.randn(VGG_WIDTHS[i], c_in, 3, 3) * 0.3
        vgg[f"features.{i}.bias"] = torch.randn(VGG_WIDTHS[i]) * 0.1
        c_in = VGG_WIDTHS[i]
    from safetensors.torch import save_file

    save_file(vgg, str(root / "vgg.safetensors"))
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(VGG_TAP_WIDTHS)},
               root / "lpips_lin.pth")
    out["lpips_vgg"], out["lpips_lin"] = root / "vgg.safetensors", root / "lpips_lin.pth"
    return out


@pytest.fixture
def video():
    """A random uint8 video [F, H, W, 3]; fresh per test."""
    return torch.randint(0, 256, (7, 40, 48, 3), dtype=torch.uint8)
