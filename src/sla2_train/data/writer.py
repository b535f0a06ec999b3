"""Write samples into webdataset tar shards, atomically, with reproducible bytes."""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .format import MEMBERS, check_key, shard_name

PARTIAL_SUFFIX = ".partial"


@dataclass
class ShardInfo:
    name: str
    num_samples: int
    bytes: int
    keys: list[str] = field(default_factory=list)


class ShardWriter:
    """Rolls a new tar every `samples_per_shard` samples.

    A shard is written as `<name>.partial` and renamed when complete, so a crash never leaves a
    truncated `.tar` that looks finished; readers and resumers only trust `.tar` files.
    """

    def __init__(self, out_dir: str | os.PathLike, samples_per_shard: int, prefix: str = "shard", start_index: int = 0,
                 on_flush: Callable[[ShardInfo], None] | None = None):
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.prefix = prefix
        self.next_index = start_index
        self.on_flush = on_flush  # called once a shard is final (e.g. to record it for resuming)
        self.finished: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._current: ShardInfo | None = None

    def _open(self) -> None:
        name = shard_name(self.next_index, self.prefix)
        self.next_index += 1
        self._current = ShardInfo(name=name, num_samples=0, bytes=0)
        self._tar = tarfile.open(self.out_dir / (name + PARTIAL_SUFFIX), mode="w", format=tarfile.USTAR_FORMAT)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        check_key(key)
        if self._tar is None:
            self._open()
        assert self._tar is not None and self._current is not None
        # Fixed member order and zeroed metadata: identical inputs give byte-identical shards.
        for suffix in MEMBERS:
            if suffix not in members:
                raise ValueError(f"sample {key} lacks member {suffix}")
            payload = members[suffix]
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(payload)
            info.mtime = 0
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(payload))
        self._current.num_samples += 1
        self._current.keys.append(key)
        if self._current.num_samples >= self.samples_per_shard:
            self.flush()

    def flush(self) -> None:
        """Close the open shard (if any) and make it visible under its final name."""
        if self._tar is None:
            return
        assert self._current is not None
        self._tar.close()
        partial = self.out_dir / (self._current.name + PARTIAL_SUFFIX)
        final = self.out_dir / self._current.name
        os.replace(partial, final)
        self._current.bytes = final.stat().st_size
        self.finished.append(self._current)
        done, self._tar, self._current = self._current, None, None
        if self.on_flush is not None:
            self.on_flush(done)

    def close(self) -> list[ShardInfo]:
        self.flush()
        return self.finished

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:
            # On error, drop the half-written shard instead of publishing it.
            self._tar.close()
            (self.out_dir / (self._current.name + PARTIAL_SUFFIX)).unlink(missing_ok=True)
            self._tar, self._current = None, None
