"""The one start-up line that says what a data-parallel run trains with: batch per rank and globally, and lr."""

from __future__ import annotations

import lightning.pytorch as pl


def batch_and_lr(trainer: pl.Trainer) -> str:
    """'world size W × per-rank batch B × accumulation A = global batch G per optimizer step; lr [<group>] <lr>, ...'

    The learning rates are the optimizer's as built (before any schedule's factor): Lightning does not scale
    them by the world size, so the configured value is the one every rank steps with.
    """
    world, accumulation = trainer.world_size, trainer.accumulate_grad_batches
    per_rank = getattr(trainer.datamodule, "batch_size", None)
    total = "?" if per_rank is None else per_rank * accumulation * world
    lrs = ", ".join(
        f"{group['name'] + ' ' if 'name' in group else ''}{group.get('initial_lr', group['lr']):g}"
        for optimizer in trainer.optimizers
        for group in optimizer.param_groups
    )
    return (f"world size {world} × per-rank batch {per_rank if per_rank is not None else '?'} × accumulation "
            f"{accumulation} = global batch {total} per optimizer step; lr {lrs} (as configured, not scaled by "
            "world size)")
