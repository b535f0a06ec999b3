"""LightningDataModule streaming latent/text shards to the batch contract (see collate.py)."""

from __future__ import annotations

import os
import signal
import warnings
from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from .checks import check_readable, check_shapes_match
from .distributed import rank_and_world
from .errors import DataError
from .shards import (
    ShardSpec,
    incomplete_folders,
    indexed_sample_count,
    resolve_shards,
    shapes_from_indexes,
    size_mismatches,
)
from .skips import SkipCounter, log
from .streams import TrainStream, ValStream

# Our train stream's __len__ is exact (each worker yields its share of epoch_length), so Lightning's generic
# caution about IterableDataset lengths with several workers does not apply.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
# Without val_shards, val_dataloader returns [] on purpose (Lightning then skips validation).
warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, int) or value < minimum:
        raise DataError(f"data.{name} must be an integer >= {minimum}, got {value!r}")
    return value


def leave_sigterm_to_the_main_process(worker_id: int) -> None:
    """DataLoader worker_init_fn. A scheduler may signal every process of a job (SLURM at its time limit,
    `kill -TERM -PGID`): PyTorch's workers die by a SIGTERM that does not come from their parent, and the main
    process then fails on the dead worker in the middle of its step instead of finishing it and saving last.ckpt
    (lit/callbacks.py). Ignoring it here leaves the decision to the main process; a worker still ends with it
    (shutdown, or its parent gone)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class LatentDataModule(L.LightningDataModule):
    """Train: each epoch the shards split over ranks and workers, exactly `epoch_length` batches per rank.
    Val: each sample once.

    latent_shape / text_dim: expected shapes (the model's); None reads them from the shards' index.json
    (without one, the first good sample of each worker sets them). A sample that does not match is skipped
    and counted in `skipped` (per rank, summed over its workers).

    Built, it has checked the shards: they exist, their index agrees with latent_shape / text_dim, and each
    split holds at least one usable sample; otherwise DataError, one line naming the `data.` key.
    """

    def __init__(
        self,
        train_shards: ShardSpec,
        val_shards: ShardSpec = None,
        batch_size: int = 1,
        num_workers: int = 2,
        epoch_length: int = 100,
        text_len: int = 512,
        seed: int = 0,
        pin_memory: bool | None = None,
        latent_shape: Sequence[int] | None = None,
        text_dim: int | None = None,
        val_batch_size: int | None = None,
        shuffle_buffer: int = 16,
        prefetch_factor: int | None = None,
        check_finite: bool = True,
    ):
        super().__init__()
        if train_shards is None:
            raise DataError("data.train_shards is required (a shard folder, pattern or list)")
        self.train_spec, self.val_spec = train_shards, val_shards
        self.batch_size = _positive("batch_size", batch_size)
        self.val_batch_size = _positive("val_batch_size", val_batch_size or batch_size)
        self.num_workers = _positive("num_workers", num_workers, 0)
        self.epoch_length = _positive("epoch_length", epoch_length)
        self.text_len = _positive("text_len", text_len)
        self.shuffle_buffer = _positive("shuffle_buffer", shuffle_buffer)
        self.seed = int(seed)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.latent_shape = tuple(int(x) for x in latent_shape) if latent_shape is not None else None
        self.text_dim = int(text_dim) if text_dim is not None else None
        self.prefetch_factor = prefetch_factor
        self.check_finite = check_finite
        self.counter = SkipCounter()
        self.train_files: list[str] | None = None
        self.val_files: list[str] | None = None
        self._resolve()

    # ---- setup -----------------------------------------------------------------------------------------
    def _resolve(self) -> None:
        if self.train_files is not None:
            return
        train = resolve_shards(self.train_spec, "data.train_shards")
        val = resolve_shards(self.val_spec, "data.val_shards") if self.val_spec is not None else []
        shape, dim = shapes_from_indexes(train + val)
        # Config and index must agree: a model built for other shapes would fail much later and less clearly
        # (or not at all: a 32,760-token sequence through the tiny model runs until the machine is out of memory).
        check_shapes_match(str(self.train_spec), shape, dim, self.latent_shape, self.text_dim)
        for key, files in (("data.train_shards", train), ("data.val_shards", val)):
            if files:
                check_readable(key, files, self.latent_shape or shape, self.text_dim or dim, self.check_finite)
        self.train_files, self.val_files = train, val
        self.latent_shape = self.latent_shape or shape
        self.text_dim = self.text_dim or dim
        for bad in size_mismatches(self.train_files + self.val_files):
            # Reading still works (damage is skipped and counted); say it early, once, with the file name.
            log.warning("shard size differs from index.json, probably truncated: %s", bad)
        for folder in incomplete_folders(self.train_files + self.val_files):
            # Each preparation process rewrites index.json when it finishes; only the last one marks it complete.
            log.warning("index.json of %s says preparation is not finished (a process still running or failed): "
                        "streaming only the shards finished so far", folder)

    def setup(self, stage: str | None = None) -> None:
        self._resolve()

    @property
    def skipped(self) -> dict[str, int]:
        """Samples skipped so far on this rank, by reason (corrupt_shard, bad_shape, ...)."""
        return self.counter.counts()

    # ---- loaders ---------------------------------------------------------------------------------------
    def _stream_kwargs(self, batch_size: int) -> dict[str, Any]:
        rank, world = rank_and_world()  # in the main process, after DDP init (see distributed.py)
        self.counter.counts()  # creates the shared counts here, before workers fork, so theirs reach us
        return dict(
            batch_size=batch_size,
            text_len=self.text_len,
            counter=self.counter,
            rank=rank,
            world_size=world,
            latent_shape=self.latent_shape,
            text_dim=self.text_dim,
            check_finite=self.check_finite,
        )

    def _workers(self) -> int:
        """num_workers, at most one per CPU this process may use: more only slow each other down (and PyTorch
        warns about them on every run, e.g. the default 4 on a 2-core machine)."""
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if self.num_workers > cpus:
            log.info("data.num_workers=%d but %d CPUs are available: using %d workers", self.num_workers, cpus, cpus)
            self.num_workers = cpus
        return self.num_workers

    def _loader(self, dataset: torch.utils.data.IterableDataset) -> DataLoader:
        extra = {}
        if self._workers() > 0:
            # Persistent workers keep each worker's epoch counter, so every epoch draws a fresh shard order.
            extra["persistent_workers"] = True
            if self.prefetch_factor is not None:
                extra["prefetch_factor"] = self.prefetch_factor
            extra["worker_init_fn"] = leave_sigterm_to_the_main_process
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory, **extra)

    def train_dataloader(self) -> DataLoader:
        self._resolve()
        # Seeding by the trainer's epoch makes a resumed run draw what the uninterrupted run would have drawn.
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        _, world = rank_and_world()
        consumers = world * max(self._workers(), 1)
        count = indexed_sample_count(self.train_files)
        if count is not None and count < consumers:
            # Each rank and worker reads its own share of the samples: an empty share could never fill a batch.
            raise DataError(f"data.train_shards hold {count} samples for {world} ranks × {self.num_workers} "
                            "workers; every one needs at least one (lower data.num_workers or add samples)")
        stream = TrainStream(
            self.train_files,
            epoch_length=self.epoch_length,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
            epoch_offset=epoch,
            **self._stream_kwargs(self.batch_size),
        )
        return self._loader(stream)

    def val_dataloader(self) -> DataLoader | list:
        self._resolve()
        if not self.val_files:
            return []  # Lightning skips validation for an empty loader list
        _, world = rank_and_world()
        count = indexed_sample_count(self.val_files)
        if count is not None and count < world:
            # A rank without a validation batch never joins the epoch-end sync of the val metrics: DDP would hang.
            raise ValueError(
                f"validation shards hold {count} samples for {world} ranks; every rank needs at least one "
                "(add validation samples, or set trainer.limit_val_batches=0)"
            )
        return self._loader(ValStream(self.val_files, **self._stream_kwargs(self.val_batch_size)))
