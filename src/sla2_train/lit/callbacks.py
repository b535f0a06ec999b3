"""Callbacks of the default training run: checkpoints that survive interruption, skipped-data counts."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from time import monotonic

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .stats import skipped_counts

log = logging.getLogger(__name__)


def replace_atomically(partial: str, final: str) -> None:
    """Move a finished checkpoint over the previous one so that a reader sees either the old or the new one.

    A file is flushed to disk, then renamed (atomic within one file system). A folder (FSDP's sharded
    checkpoint) cannot replace a folder in one rename: the old one is moved aside first and deleted last.
    """
    if os.path.isdir(partial):
        aside = final + ".old"
        shutil.rmtree(aside, ignore_errors=True)
        if os.path.exists(final):
            os.replace(final, aside)
        os.replace(partial, final)
        shutil.rmtree(aside, ignore_errors=True)
        return
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, final)


class LastCheckpoint(ModelCheckpoint):
    """last.ckpt that always holds the latest finished step a run reached.

    Beyond ModelCheckpoint's step interval it saves
    - at the end of training (Lightning skips that when an earlier save exists, so a run stopping between save
      intervals would resume from an older step);
    - every `every_n_minutes` of training as well (ModelCheckpoint takes a step or a time interval, not both);
    - on SIGTERM (a preempted cluster job; Lightning stops at the end of the step) and on the first SIGINT
      (Ctrl-C; the step in flight finishes first, a second Ctrl-C aborts at once).
    Each save goes to `<file>.partial` and is then renamed over the previous one, so a run killed while saving
    leaves the previous checkpoint loadable (Lightning's own write goes through a temporary file only when
    the system temp folder is on the checkpoint's file system, and a copy across file systems is not atomic).
    """

    def __init__(self, *args, every_n_minutes: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise ValueError(f"callbacks.checkpoint.every_n_minutes must be > 0 or null, got {every_n_minutes}")
        self.every_n_minutes = every_n_minutes
        self._last_save_time = monotonic()
        self._stale = False
        self._interrupted = False
        self._pid = os.getpid()
        self._previous_sigint = None

    # ---- interruption ----------------------------------------------------------------------------------
    def _on_sigint(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker inherited this handler: it keeps serving the step in flight
        if self._interrupted:  # the second Ctrl-C: stop now, without saving
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self._interrupted = True
        # os.write: print() inside a signal handler can collide with a print the handler interrupted
        os.write(2, b"\ninterrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)\n")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_save_time = monotonic()
        self._interrupted = False
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _save_last_now(self, trainer: pl.Trainer, why: str) -> None:
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        log.info("%s: saved %s at step %d; the same command resumes from it", why, self.last_model_path,
                 trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        timed = self.every_n_minutes is not None and not self._should_skip_saving_checkpoint(trainer)
        # rank 0's clock decides the timed save
        due = timed and trainer.is_global_zero and monotonic() - self._last_save_time >= 60 * self.every_n_minutes
        interrupted = self._interrupted
        if trainer.world_size > 1:
            # Every rank takes the same decisions, or a save (which synchronises ranks) would hang: one reduction
            # a step carries both (any rank interrupted, rank 0's save due).
            flags = sum_over_ranks(trainer, pl_module, [float(interrupted), float(due)])
            interrupted, due = (bool(x) for x in flags.tolist())
        if interrupted:
            self._save_last_now(trainer, "interrupted")
            raise KeyboardInterrupt  # Lightning's Ctrl-C path: teardown, then exit
        if due:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        # Lightning raises SIGTERMException at the end of a step, so the state saved is a finished step.
        if isinstance(exception, SIGTERMException) and not trainer.sanity_checking:
            self._save_last_now(trainer, "terminated (SIGTERM)")

    def weights_changed(self) -> None:
        """The weights changed after this step's save (α fitted once a callback stopped the run): the save at
        the end of training writes them again."""
        self._stale = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and (self._stale or self._last_global_step_saved != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._stale = False

    # ---- every save ------------------------------------------------------------------------------------
    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        partial = filepath + ".partial"
        trainer.save_checkpoint(partial, self.save_weights_only)
        trainer.strategy.barrier("LastCheckpoint.written")  # every rank's part (FSDP shards) is on disk
        if trainer.is_global_zero:
            replace_atomically(partial, filepath)
        trainer.strategy.barrier("LastCheckpoint.renamed")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        self._last_save_time = monotonic()
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)


def sum_over_ranks(trainer: pl.Trainer, pl_module: pl.LightningModule, values: list[float]) -> torch.Tensor:
    """The values summed over ranks, as one float32 tensor. One process runs no collective and keeps them on the
    host (a one-process FSDP run still has an NCCL group, which cannot reduce a host tensor); several send them to
    the group's device from pinned memory, as a plain copy to the GPU would wait for the step to finish."""
    values = torch.tensor(values, dtype=torch.float32)
    if trainer.world_size == 1:
        return values
    if pl_module.device.type == "cuda":
        values = values.pin_memory().to(pl_module.device, non_blocking=True)
    return trainer.strategy.reduce(values, reduce_op="sum")


class SkippedSamplesLogger(pl.Callback):
    """Logs the data module's skipped samples as `train/skipped/<reason>` and `train/skipped/total`, summed over
    ranks, after every step: bad data shows up in the run's metrics beside the loss, not only in warnings."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        counts = skipped_counts(getattr(trainer, "datamodule", None))
        if not counts:
            return
        # One reduction for all reasons: every rank reports the same fixed reasons, so the collective matches.
        summed = sum_over_ranks(trainer, pl_module, list(counts.values()))
        pl_module.log_dict({f"train/skipped/{k}": v for k, v in zip(counts, summed)}, on_step=True, on_epoch=False)


class ResumedTimeLimit(pl.Callback):
    """Says, naming the key, when a resumed run's trainer.max_time is already used up. Lightning's Timer keeps the
    training time in the checkpoint, so the limit counts earlier runs too, and re-running a finished command
    silently trains nothing (a used-up trainer.max_steps Lightning reports itself)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the callbacks' state is restored (before it with FSDP, whose restore comes later: then silent).
        for timer in (c for c in trainer.callbacks if isinstance(c, Timer)):
            elapsed, remaining = timer.time_elapsed(), timer.time_remaining()
            if elapsed > 0 and remaining is not None and remaining <= 0:
                log.warning("resumed after %.0f s of training, all that trainer.max_time allows: nothing to train; "
                            "raise it to the new total, earlier runs' time included, to train on", elapsed)
