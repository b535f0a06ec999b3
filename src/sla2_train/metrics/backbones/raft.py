"""RAFT optical flow (torchvision's raft_large architecture) with local weights.

torchvision is optional: it is imported here, when the weights are configured, and its absence skips
dynamic degree with one line rather than failing the evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .loading import MissingWeights, load_state_dict


class RaftFlow:
    def __init__(self, model):
        self.model = model.eval()

    def to(self, device) -> "RaftFlow":
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """float [N, 3, H, W] in [0, 1] twice → flow [N, 2, H, W] (H, W padded to multiples of 8 inside)."""
        h, w = a.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        pad = lambda x: torch.nn.functional.pad(x * 2 - 1, (0, pw, 0, ph), mode="replicate")  # noqa: E731
        return self.model(pad(a), pad(b), num_flow_updates=20)[-1][..., :h, :w]


def load_raft(path: Path, key: str) -> RaftFlow:
    try:
        from torchvision.models.optical_flow import raft_large
    except Exception as err:  # ImportError, or a torchvision built for another torch
        raise MissingWeights(key, f"RAFT weights AND install torchvision (import failed: {str(err).splitlines()[0]})")
    model = raft_large(weights=None, progress=False)
    model.load_state_dict(load_state_dict(path, key))
    return RaftFlow(model)
