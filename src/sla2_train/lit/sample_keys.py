"""The key of every training sample each rank consumed, one file per rank: the record of how the data was split.

Each line of `<dirpath>/rank<R>.txt` is `<global step>\t<epoch>\t<sample key>`, where the step is the optimizer
step the sample fed (0-based; with gradient accumulation several batches share one). Lines are flushed after
every batch, so a killed run keeps the keys of every batch it finished.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl

_RANK_FILE = re.compile(r"rank(\d+)\.txt")


class SampleKeysLog(pl.Callback):
    def __init__(self, dirpath: str):
        self.dirpath = dirpath
        self._file: TextIO | None = None
        self._step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        # A fresh run replaces an earlier run's record (like its checkpoint); a resumed one adds to it.
        mode = "a" if trainer.global_step > 0 else "w"
        self._file = open(os.path.join(self.dirpath, f"rank{trainer.global_rank}.txt"), mode, encoding="utf-8")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._step = trainer.global_step  # at the batch's end it may already count the step this batch completed

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch: Any, batch_idx: int) -> None:
        keys = batch.get("keys") if isinstance(batch, dict) else None
        if keys is None:
            raise ValueError("callbacks.sample_keys needs training batches with 'keys' (the data module's batch "
                             "contract, sla2_train.data.collate)")
        epoch = trainer.current_epoch
        self._file.write("".join(f"{self._step}\t{epoch}\t{key}\n" for key in keys))
        self._file.flush()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_sample_keys(dirpath: str | Path) -> dict[int, list[tuple[int, int, str]]]:
    """{rank: [(step, epoch, key), ...]} from a SampleKeysLog folder, in the order consumed."""
    records = {}
    for path in sorted(Path(dirpath).glob("rank*.txt")):
        match = _RANK_FILE.fullmatch(path.name)
        if match:
            lines = path.read_text(encoding="utf-8").splitlines()
            records[int(match.group(1))] = [(int(s), int(e), k) for s, e, k in (line.split("\t") for line in lines)]
    return records


def split_summary(records: dict[int, list[tuple[int, int, str]]]) -> dict[str, Any]:
    """Per rank and epoch: how many samples, how many distinct, and whether ranks shared any within an epoch.

    `disjoint` is true when no key appears on two ranks in the same epoch; `union` is the number of distinct
    keys per epoch over all ranks (an epoch of distinct samples has union = sum of the ranks' counts).
    """
    per_epoch: dict[int, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for rank, rows in records.items():
        for _, epoch, key in rows:
            per_epoch[epoch][rank].append(key)
    epochs = {}
    for epoch, ranks in sorted(per_epoch.items()):
        owners: dict[str, set[int]] = defaultdict(set)
        for rank, keys in ranks.items():
            for key in keys:
                owners[key].add(rank)
        shared = sorted(k for k, r in owners.items() if len(r) > 1)
        epochs[epoch] = {
            "samples": {rank: len(keys) for rank, keys in sorted(ranks.items())},
            "distinct": {rank: len(set(keys)) for rank, keys in sorted(ranks.items())},
            "union": len(owners),
            "shared_between_ranks": shared[:10],
            "disjoint": not shared,
        }
    return {"ranks": sorted(records), "epochs": epochs}
