"""Numbers worth watching during training besides the loss: α per layer, samples the data had to skip."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sla2_train.models import sla2_processors


@torch.no_grad()
def alpha_means(model: nn.Module) -> list[torch.Tensor]:
    """Mean α of each layer whose α is a stored logit (alpha_mode per_head / per_block); [] otherwise.
    Tensors, not floats: reading them back every step would stall the GPU once per layer."""
    means = []
    for proc in sla2_processors(model):
        logit = getattr(getattr(proc.attention, "alpha", None), "logit", None)
        if logit is not None:
            means.append(torch.sigmoid(logit.detach().float()).mean())
    return means


def skipped_counts(datamodule: Any) -> dict[str, int]:
    """Skipped samples by reason, plus "total", if the datamodule reports them (a mapping or an int)."""
    skipped = getattr(datamodule, "skipped", None)
    if skipped is None:
        return {}
    counts = {str(k): int(v) for k, v in skipped.items()} if isinstance(skipped, Mapping) else {}
    counts["total"] = sum(counts.values()) if isinstance(skipped, Mapping) else int(skipped)
    return counts
