"""Local weight files: where a metric's weights are not configured it is skipped, never downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

from sla2_train.models import ConfigError


class MissingWeights(Exception):
    """A metric's backbone path is not set: the metric is skipped with this one line."""

    def __init__(self, key: str, what: str):
        super().__init__(f"set {key} to {what}")
        self.key, self.what = key, what


def require_path(path: str | Path | None, key: str, what: str) -> Path:
    """The existing local path under config key `key`; MissingWeights when unset, ConfigError when absent."""
    if path is None or str(path) == "":
        raise MissingWeights(key, what)
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{key}: no file or folder at {str(p)!r} ({what})")
    return p


def load_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch.save'd state dict (loaded with weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: name the key, not the unpickler's internals
        raise ConfigError(f"{key}: cannot read weights from {str(path)!r}: {str(err).splitlines()[0]}") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{key}: {str(path)!r} holds no state dict")
    return state
