"""The output folder of a preparation run: settings check, resume state, per-shard records, final index.

Files (rank r of a run with several processes; every rank touches only its own files, except the index):
    prepare.json               settings the dataset was made with (a different run must not mix into it)
    shard-rRRR-NNNNNN.tar      shards (written as .partial, renamed when complete)
    shard-rRRR-NNNNNN.json     the shard's record: its samples; written after the rename = the shard is done
    failures-rRRR.jsonl        skipped videos, one JSON line each (reason, detail)
    .done-rRRR-of-WWW          rank finished
    .decoding-rRRR-PID         the video a decode process is reading now; one left behind names the file
                               that killed its process (e.g. a libav segfault), skipped on the next run
    index.json                 rebuilt from all records by every rank that finishes (under a lock)
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..format import INDEX_NAME
from ..index import build_index, write_index
from ..writer import PARTIAL_SUFFIX, ShardInfo

SETTINGS_NAME = "prepare.json"
_OURS = re.compile(r"^(shard-r\d{3}-\d{6}\.(tar|json|tar\.partial)|failures-r\d{3}\.jsonl|index\.json|prepare\.json)$")
_RECORD = re.compile(r"^shard-r(\d{3})-(\d{6})\.json$")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class OutputStore:
    def __init__(self, root: str | os.PathLike, rank: int, world_size: int, settings: dict[str, Any], overwrite: bool = False):
        self.root = Path(root).expanduser()
        self.rank, self.world = rank, world_size
        self.prefix = f"shard-r{rank:03d}"
        self.settings = settings
        self._open(overwrite)

    # ---- opening: refuse to mix datasets ---------------------------------------------------------------
    def _open(self, overwrite: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        entries = [p.name for p in self.root.iterdir() if not p.name.startswith(".")]
        foreign = [n for n in entries if not _OURS.match(n)]
        if foreign:
            raise FileExistsError(f"out_dir {self.root} holds files that are not a prepared dataset (e.g. {foreign[0]}); choose an empty or new folder")
        settings_path = self.root / SETTINGS_NAME
        if settings_path.is_file():
            old = json.loads(settings_path.read_text())
            if old != self.settings or overwrite:
                if not overwrite:
                    diff = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
                    raise FileExistsError(
                        f"out_dir {self.root} holds a dataset prepared with other settings ({', '.join(diff)}); "
                        "pass output.overwrite=true to replace it, or choose another out_dir"
                    )
                self._wipe()
        elif entries and not overwrite:
            raise FileExistsError(f"out_dir {self.root} holds shards but no {SETTINGS_NAME}; pass output.overwrite=true to replace them")
        elif entries:
            self._wipe()
        _atomic_write(settings_path, json.dumps(self.settings, indent=1, sort_keys=True))
        self._clean_own_leftovers()

    def _wipe(self) -> None:
        """overwrite=true: remove this rank's files; rank 0 also the index and files of ranks beyond this run."""
        for p in self.root.iterdir():
            m = re.match(r"^(?:shard|failures|\.done|\.decoding)-r(\d{3})", p.name)
            mine = m is not None and int(m.group(1)) == self.rank
            extra = self.rank == 0 and (m is not None and int(m.group(1)) >= self.world or p.name in (INDEX_NAME, SETTINGS_NAME))
            if mine or extra:
                p.unlink()

    def _clean_own_leftovers(self) -> None:
        """A crash leaves .partial shards or a .tar whose record was never written: both are redone."""
        for p in self.root.glob(f"{self.prefix}-*"):
            if p.name.endswith(PARTIAL_SUFFIX) or (p.suffix == ".tar" and not p.with_suffix(".json").is_file()):
                p.unlink()
        (self.root / f".done-r{self.rank:03d}-of-{self.world:03d}").unlink(missing_ok=True)

    # ---- resume state ----------------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """Records of finished shards that are still intact (present, with the size recorded when written).

        A shard damaged since (truncated copy, disk error) is not done: its samples are encoded again, and
        it stays out of index.json.
        """
        out = []
        for p in sorted(self.root.glob("shard-r*-*.json")):
            tar = self.root / p.with_suffix(".tar").name
            if _RECORD.match(p.name) and tar.is_file():
                record = json.loads(p.read_text())
                if tar.stat().st_size == record["bytes"]:
                    out.append(record)
        return out

    def done_keys(self) -> set[str]:
        return {s["key"] for r in self.records() for s in r["samples"]}

    def failures(self) -> dict[str, dict[str, Any]]:
        """Latest failure per key over all ranks' failure logs."""
        out: dict[str, dict[str, Any]] = {}
        for p in sorted(self.root.glob("failures-r*.jsonl")):
            for line in p.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line another rank is still appending, or cut by a crash
                out[rec["key"]] = rec
        return out

    def next_shard_index(self) -> int:
        own = [int(m.group(2)) for p in self.root.glob(f"{self.prefix}-*.json") if (m := _RECORD.match(p.name))]
        return max(own, default=-1) + 1

    # ---- recording -------------------------------------------------------------------------------------
    def record_shard(self, info: ShardInfo, samples: list[dict[str, Any]]) -> None:
        record = {"name": info.name, "num_samples": info.num_samples, "bytes": info.bytes, "samples": samples}
        _atomic_write(self.root / info.name.replace(".tar", ".json"), json.dumps(record))

    def decoding_marker_prefix(self) -> str:
        """Decode processes append their pid: one marker per process, holding the video it is reading."""
        return str(self.root / f".decoding-r{self.rank:03d}-")

    def take_crash_markers(self) -> list[tuple[str, str]]:
        """(key, source) of videos whose decode process died mid-read in an earlier run; markers removed."""
        out = []
        for p in sorted(self.root.glob(f".decoding-r{self.rank:03d}-*")):
            key, _, source = p.read_text().partition("\t")
            if key:
                out.append((key, source))
            p.unlink()
        return out

    def record_failure(self, key: str, source: str, reason: str, detail: str) -> None:
        with open(self.root / f"failures-r{self.rank:03d}.jsonl", "a") as f:
            f.write(json.dumps({"key": key, "source": source, "reason": reason, "detail": detail}) + "\n")

    # ---- finishing -------------------------------------------------------------------------------------
    @contextmanager
    def _lock(self):
        with open(self.root / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def finish(self) -> dict[str, Any] | None:
        """Mark this rank done and rebuild index.json from every shard record present (None if no shard yet)."""
        (self.root / f".done-r{self.rank:03d}-of-{self.world:03d}").touch()
        with self._lock():
            records = self.records()
            if not records:
                return None
            samples = [s for r in records for s in r["samples"]]
            shapes = {tuple(s["latent_shape"]) for s in samples}
            dims = {s["text_dim"] for s in samples}
            if len(shapes) != 1 or len(dims) != 1:
                raise ValueError(f"shards in {self.root} disagree on shapes: latent {sorted(shapes)}, text_dim {sorted(dims)}")
            done = {s["key"] for s in samples}
            skipped = Counter(f["reason"] for k, f in self.failures().items() if k not in done)
            finished = all((self.root / f".done-r{r:03d}-of-{self.world:03d}").exists() for r in range(self.world))
            shards = [ShardInfo(r["name"], r["num_samples"], r["bytes"]) for r in records]
            index = build_index(
                shards, shapes.pop(), dims.pop(), self.settings["dtype"],
                [s["text_len"] for s in samples], {s["key"]: s["source_hash"] for s in samples},
                extra={"created_by": "sla2-prepare", "complete": finished, "skipped": dict(sorted(skipped.items())),
                       "params": self.settings, "sources": {s["key"]: s["source"] for s in samples}},
            )
            write_index(self.root, index)
            return index
