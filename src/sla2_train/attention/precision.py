"""The attention's float32 computations that autocast must not lower.

A bf16-mixed trainer runs the training step under autocast, which runs every matmul in bf16, `.float()` inputs
included. The router's pooled scores would then lose their near-ties (bf16 keeps 8 significant bits: a score of
10 is resolved to 0.06), so stage 1 would rank other scores than the kernels' router (fp32 and 3xTF32) ranks at
inference, and α calibration and the router monitor would measure against a bf16 full attention. These switch
autocast off and cast to float32 themselves. The stage-1 loss keeps the trainer's precision: in float32 it
trained the same router (docs/results.md, "What the 97% gap closed depends on") at several times the
matmul cost.
"""

from __future__ import annotations

import torch


def no_autocast(device: torch.device):
    """A context in which matmuls run in their inputs' dtype on `device`."""
    return torch.autocast(device.type, enabled=False)
