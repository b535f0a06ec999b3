"""What an eval run has finished, kept as it goes, so that the same command continues a stopped run.

A run's results folder is named by the digest of everything that decides its videos (settings.py), so running
the same command again after a stop (time limit, preemption, Ctrl-C) lands in the same folder. After each unit
(one prompt and seed: the dense video and every SLA2 row's video from the same noise) `progress.jsonl` gains one
line holding the unit's video records and what the unit added to the attention probe's sums. A re-run reads the
lines back, keeps the units whose mp4 files are all still there, and samples only the others; the report is the
one an uninterrupted run writes (timings excepted, which are each video's own). A line cut short by the stop is
dropped, and with it only its unit.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("eval")

FILE_NAME = "progress.jsonl"
Unit = tuple[int, int]  # (prompt index, seed)


class Progress:
    def __init__(self, folder: Path, prompts: list[str], resume: bool = True):
        self.folder, self.path, self.prompts = folder, folder / FILE_NAME, prompts
        # (prompt index, seed) → the finished unit's entry
        self.done: dict[Unit, dict[str, Any]] = self._read() if resume else {}
        # Rewrite what is kept (no torn line, no unit whose video is gone) before appending to it.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(entry) + "\n" for entry in self.done.values()))
        os.replace(tmp, self.path)

    def _read(self) -> dict[Unit, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        done, torn, stale = {}, 0, 0
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
                unit = (int(entry["prompt_index"]), int(entry["seed"]))
                records, probe = entry["records"], entry.get("probe")
            except (ValueError, KeyError, TypeError):
                torn += 1
                continue
            # the folder's digest covers the prompts: another prompt here means a hand-edited file
            if unit[0] >= len(self.prompts) or any(r["prompt"] != self.prompts[unit[0]] for r in records) or \
                    not all((self.folder / r["video"]).is_file() for r in records):
                stale += 1
                continue
            done[unit] = {"prompt_index": unit[0], "seed": unit[1], "records": records, "probe": probe}
        if torn or stale:
            log.warning("%s: %d unreadable line(s) and %d unit(s) with a missing video or another prompt dropped; "
                        "they are sampled again", self.path, torn, stale)
        return done

    def add(self, prompt_index: int, seed: int, records: list[dict[str, Any]], probe: dict[str, Any] | None) -> None:
        """Append one finished unit (flushed and synced: a stop right after it keeps it)."""
        entry = {"prompt_index": prompt_index, "seed": seed, "records": records, "probe": probe}
        self.done[(prompt_index, seed)] = entry
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
