"""Which transformer weights the dense rows run when `ckpt` holds trained ones (`dense_weights`).

`checkpoint` (the default): dense and SLA2 rows run the checkpoint's transformer, so the comparison isolates
the attention. `base`: the dense rows run the folder's own weights, the model the user started from, and the
SLA2 rows the checkpoint's: after stage 2, which fine-tunes the transformer, that is the comparison a paper
reports (does the fast model keep the original's quality?). Only the transformer's own tensors are swapped; the
SLA2 modules (router, α) are the checkpoint's in both, so the per-layer attention error along the dense
trajectory is the trained router and α on the base model's q, k, v.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from sla2_train.models import ConfigError, sla2_processors

CHOICES = ("checkpoint", "base")


def check_choice(value: str) -> str:
    if value not in CHOICES:
        raise ConfigError(f"dense_weights must be one of {list(CHOICES)}, got {value!r}")
    return value


def _transformer_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers outside its SLA2 modules, by state-dict name (the tensors themselves)."""
    sla2 = {id(t) for p in sla2_processors(model) for t in (*p.attention.parameters(), *p.attention.buffers())}
    return {n: t for n, t in model.state_dict(keep_vars=True).items() if id(t) not in sla2}


class BaseWeights:
    """Holds the folder's transformer weights (taken before the checkpoint is loaded) and the checkpoint's (taken
    once the model has its inference dtype), both on the CPU, and swaps them in place around the dense runs.
    Host memory: two copies of the transformer in its inference dtype (plus a float32 one while loading)."""

    def __init__(self, model: nn.Module):
        self._base = {n: t.detach().to("cpu", copy=True) for n, t in _transformer_tensors(model).items()}
        self._trained: dict[str, torch.Tensor] | None = None
        self._model = model

    def ready(self) -> None:
        """Call once the checkpoint is loaded and the model cast and moved: keeps its weights, and the base ones
        in the same dtypes."""
        live = _transformer_tensors(self._model)
        self._base = {n: self._base[n].to(live[n].dtype) for n in live}
        self._trained = {n: t.detach().to("cpu", copy=True) for n, t in live.items()}

    @torch.no_grad()
    def _load(self, weights: dict[str, torch.Tensor]) -> None:
        for name, t in _transformer_tensors(self._model).items():
            t.copy_(weights[name], non_blocking=True)

    @contextmanager
    def dense(self) -> Iterator[None]:
        """The base weights inside, the checkpoint's again after (also when the body raises)."""
        if self._trained is None:
            raise RuntimeError("BaseWeights.ready() was not called after loading the checkpoint")
        self._load(self._base)
        try:
            yield
        finally:
            self._load(self._trained)
