"""Log the data module's skip counts during training, so bad data shows up in the run's metrics."""

from __future__ import annotations

import lightning as L


class SkippedSamplesLogger(L.Callback):
    """Logs `data/skipped_<reason>` (summed over ranks) at the end of every train epoch."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = getattr(trainer.datamodule, "skipped", None)
        if counts is None:
            return
        for reason, n in counts.items():
            pl_module.log(f"data/skipped_{reason}", float(n), sync_dist=True, reduce_fx="sum")
