"""Callbacks of the default training run: last.ckpt that always holds the final state, skipped-data counts."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from .stats import skipped_counts


class LastCheckpoint(ModelCheckpoint):
    """Lightning writes last.ckpt at the end of training only if no checkpoint was written before, so a run
    that stops between save intervals would resume from an older step; this one always writes it."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class SkippedSamplesLogger(pl.Callback):
    """Logs the data module's skipped samples as `train/skipped/<reason>` and `train/skipped/total`, summed over
    ranks, after every step: bad data shows up in the run's metrics beside the loss, not only in warnings."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        counts = skipped_counts(getattr(trainer, "datamodule", None))
        if not counts:
            return
        # One reduction for all reasons; every rank reports the same fixed reasons, so the collective matches.
        summed = trainer.strategy.reduce(
            torch.tensor(list(counts.values()), dtype=torch.float32, device=pl_module.device), reduce_op="sum"
        )
        pl_module.log_dict({f"train/skipped/{k}": v for k, v in zip(counts, summed)}, on_step=True, on_epoch=False)
