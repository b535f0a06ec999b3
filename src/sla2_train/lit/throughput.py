"""Training throughput and peak memory per rank, written as JSON when training ends (for scaling runs).

Steps after the first `warmup_steps` optimizer steps are timed (compilation, autotuning and the loaders' first
batches fall into the warm-up), from the end of the last warm-up step to the end of the last step, with the
GPU synchronised at both ends. Peak memory is PyTorch's peak allocated and reserved on this rank's GPU over
the whole run (null on CPU).
"""

from __future__ import annotations

import json
import os
from time import perf_counter
from typing import Any

import lightning.pytorch as pl
import torch


class ThroughputLog(pl.Callback):
    def __init__(self, dirpath: str, warmup_steps: int = 2):
        if not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"callbacks.throughput.warmup_steps must be an integer >= 1, got {warmup_steps!r}")
        self.dirpath = dirpath
        self.warmup_steps = warmup_steps
        self._start: float | None = None
        self._start_step = 0
        self._samples = 0
        self._last_step = 0

    def _now(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self._start is None:
            if step >= self.warmup_steps and step > self._last_step:  # the warm-up's last optimizer step is done
                self._start, self._start_step = self._now(pl_module.device), step
        else:
            self._samples += int(batch["latents"].shape[0])
        self._last_step = step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        timed = self._start is not None and self._last_step > self._start_step
        seconds = self._now(device) - self._start if timed else None
        cuda = device.type == "cuda"
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "device": torch.cuda.get_device_name(device) if cuda else str(device),
            "warmup_steps": self.warmup_steps,
            "steps_timed": self._last_step - self._start_step if timed else 0,
            "samples_timed": self._samples if timed else 0,
            "seconds": seconds,
            "samples_per_s": self._samples / seconds if timed else None,
            "step_time_s": seconds / (self._last_step - self._start_step) if timed else None,
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None,
        }
        os.makedirs(self.dirpath, exist_ok=True)
        with open(os.path.join(self.dirpath, f"rank{trainer.global_rank}.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
