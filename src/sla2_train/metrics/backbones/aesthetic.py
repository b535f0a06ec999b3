"""The LAION aesthetic predictor head on normalised CLIP ViT-L/14 image embeddings.

Both published heads are stacks of Linear layers with nothing between them at inference (the linear
`sa_0_4_vit_l_14_linear.pth` that VBench uses, and the improved predictor's 768→1024→128→64→16→1 MLP whose
Dropouts are inactive), so the head is rebuilt from the state dict's weight shapes in key order.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from sla2_train.models import ConfigError

from .loading import load_state_dict


def load_aesthetic_head(path: Path, key: str) -> nn.Sequential:
    state = load_state_dict(path, key)
    weights = sorted((k for k in state if k.endswith("weight")), key=lambda k: [int(n) for n in re.findall(r"\d+", k)])
    if not weights or any(state[k].dim() != 2 for k in weights):
        raise ConfigError(f"{key}: {str(path)!r} is not a stack of Linear layers (a LAION aesthetic head)")
    layers, loaded = [], {}
    for i, name in enumerate(weights):
        out_f, in_f = state[name].shape
        bias = name[: -len("weight")] + "bias"
        layers.append(nn.Linear(in_f, out_f, bias=bias in state))
        loaded[f"{i}.weight"] = state[name]
        if bias in state:
            loaded[f"{i}.bias"] = state[bias]
    head = nn.Sequential(*layers)
    try:
        head.load_state_dict(loaded)
    except RuntimeError as err:
        raise ConfigError(f"{key}: the layers of {str(path)!r} do not chain: {str(err).splitlines()[0]}") from err
    if layers[-1].out_features != 1:
        raise ConfigError(f"{key}: the head in {str(path)!r} ends in {layers[-1].out_features} outputs, not 1")
    return head.eval()
