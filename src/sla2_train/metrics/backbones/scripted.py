"""Networks exported to TorchScript (a no-reference IQA such as MUSIQ, a frame interpolator such as AMT).

TorchScript carries its own architecture, so any exporter's model plugs in without this project
reimplementing it; loading runs no pickled Python code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sla2_train.models import ConfigError


def load_scripted(path: Path, key: str) -> torch.jit.ScriptModule:
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:
        raise ConfigError(f"{key}: {str(path)!r} is not a TorchScript file: {str(err).splitlines()[0]}") from err
