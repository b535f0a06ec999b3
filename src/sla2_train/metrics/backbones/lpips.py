"""LPIPS (Zhang et al. 2018, the VGG variant) in plain torch, from two local weight files.

vgg: torchvision's VGG16 state dict (keys features.<i>.weight/bias); lin: LPIPS's linear layers
(keys lin<k>.model.1.weight). The feature taps are relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (indices 3,
8, 15, 22, 29 of VGG16's `features`); channel widths are read from the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sla2_train.models import ConfigError

from .loading import load_state_dict

# VGG16 `features` indices: convolutions (each followed by a ReLU), max-pools, and the ReLUs LPIPS taps.
_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_POOLS = (4, 9, 16, 23)
_TAPS = (3, 8, 15, 22, 29)
# LPIPS's input scaling of [-1, 1] images.
_SHIFT, _SCALE = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)


def _vgg_features(state: dict[str, torch.Tensor], key: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(_TAPS[-1] + 1):
        if i in _CONVS:
            w = state.get(f"features.{i}.weight")
            if w is None:
                raise ConfigError(f"{key}: no features.{i}.weight: not a torchvision VGG16 state dict")
            layers.append(nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1))
        elif i in _POOLS:
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers)
    net.load_state_dict({k[len("features."):]: v for k, v in state.items()
                         if k.startswith("features.") and int(k.split(".")[1]) <= _TAPS[-1]})
    return net


class LPIPS(nn.Module):
    """d(x, y) = Σ_layers mean_hw ‖w_l ⊙ (f̂_l(x) − f̂_l(y))‖², f̂ = channel-normalised VGG features."""

    def __init__(self, features: nn.Sequential, lins: list[torch.Tensor]):
        super().__init__()
        self.features = features
        self.lins = nn.ParameterList([nn.Parameter(w.reshape(1, -1, 1, 1), requires_grad=False) for w in lins])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    @classmethod
    def load(cls, vgg: Path, lin: Path, vgg_key: str, lin_key: str) -> "LPIPS":
        features = _vgg_features(load_state_dict(vgg, vgg_key), vgg_key)
        lin_state = load_state_dict(lin, lin_key)
        lins = [lin_state.get(f"lin{k}.model.1.weight") for k in range(len(_TAPS))]
        if any(w is None for w in lins):
            raise ConfigError(f"{lin_key}: {str(lin)!r} lacks lin0..lin4.model.1.weight (LPIPS vgg linear layers)")
        widths = [features[t - 1].out_channels for t in _TAPS]
        if [w.shape[1] for w in lins] != widths:
            raise ConfigError(f"{lin_key}: LPIPS layers of widths {[w.shape[1] for w in lins]} do not fit the "
                              f"VGG of {vgg_key} (widths {widths})")
        return cls(features, lins).eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x * 2 - 1 - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: float [N, 3, H, W] in [0, 1] → [N] distances."""
        total = x.new_zeros(x.shape[0])
        for w, fx, fy in zip(self.lins, self._taps(x), self._taps(y)):
            total = total + (w * (fx - fy).pow(2)).sum(1).mean((-2, -1))
        return total

