"""Record each self-attention layer's (q, k, v) during a forward, densely or as the model runs.

Stage 1 distils SLA2 towards full attention on exactly the inputs the dense model produces, and eval
measures per-layer errors the same way; both need the teacher's q, k, v after q/k norm and RoPE. Stage 2's
router term reads the q, k, v of the fine-tune's own SLA2 forward instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from torch import nn

from .attention_swap import sla2_processors
from .sla2_processor import SLA2WanProcessor


@contextmanager
def capture_qkv(model: nn.Module, layers: Sequence[int] | None = None, *, dense: bool
                ) -> Iterator[list[SLA2WanProcessor]]:
    """Inside: the yielded processors (of `layers`, default all) hold `.captured` = (q, k, v) of the last
    forward, detached; with `dense` every layer runs dense attention, without it the model runs as it is (the
    q, k, v its own SLA2 forward makes). Outside: captures dropped (they are large), SLA2 again."""
    procs = sla2_processors(model)
    if not procs:
        raise ValueError("the model has no SLA2 processors to capture from (attention=full?)")
    chosen = procs if layers is None else [procs[i] for i in layers]
    for p in procs:
        p.dense = dense
    for p in chosen:
        p.capture = True
    try:
        yield chosen
    finally:
        for p in procs:
            p.dense = p.capture = False
            p.captured = None


def dense_capture(model: nn.Module, layers: Sequence[int] | None = None):
    """capture_qkv with dense attention: the dense model's q, k, v (the teacher's inputs)."""
    return capture_qkv(model, layers, dense=True)


@contextmanager
def dense_attention(model: nn.Module) -> Iterator[None]:
    """The same model with its SLA2 layers temporarily running diffusers' dense attention."""
    procs = sla2_processors(model)
    for p in procs:
        p.dense = True
    try:
        yield
    finally:
        for p in procs:
            p.dense = False
