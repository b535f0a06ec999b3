"""Activation checkpointing that keeps SLA2's attention outputs instead of recomputing them.

diffusers' default checkpoints each Wan block whole, so the backward re-runs the block's forward, SLA2
included (FastVideo reports ~12% of the compute wasted this way on Wan-1.3B with dense attention).
`keep_attention` is selective checkpointing: the outputs of the sla2::router and sla2::attention ops
(O, lse, with QAT the low-bit O_s^q, and the key-side state the backward reads) are saved during the forward
and reused in the recompute; everything else (projections, norms, FFN) is recomputed as before. The price is
those outputs' memory: about 2·N·H·D bf16 per layer (≈ 200 MB per layer for Wan-1.3B at 480p), N·H·D more
with QAT.
Only the op path (hard Top-k) is covered; SoftTop-k runs under no_grad DiT forwards in stage 1 anyway.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from sla2_train.attention import ops  # noqa: F401  (registers torch.ops.sla2.*)

from .errors import ConfigError

CHECKPOINT_MODES = ("none", "full", "keep_attention")


def _saved_ops() -> tuple:
    return (torch.ops.sla2.router.default, torch.ops.sla2.attention.default)


def _keep_sla2_outputs(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if func in _saved_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_keeping_attention(module, *args):
    """diffusers' gradient_checkpointing_func signature: (module, *inputs) -> module(*inputs), checkpointed."""
    return checkpoint(
        module.__call__,
        *args,
        use_reentrant=False,
        context_fn=partial(create_selective_checkpoint_contexts, _keep_sla2_outputs),
    )


def enable_checkpointing(model, mode: str | bool) -> None:
    """mode: "none"/False, "full"/True (diffusers' default: whole blocks recomputed) or "keep_attention"."""
    mode = {False: "none", True: "full"}.get(mode, mode)
    if mode not in CHECKPOINT_MODES:
        raise ConfigError(
            f"model.transformer.gradient_checkpointing: unknown mode {mode!r}; "
            f"choose one of {list(CHECKPOINT_MODES)} (or true/false)"
        )
    if mode == "full":
        model.enable_gradient_checkpointing()
    elif mode == "keep_attention":
        model.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_keeping_attention)
