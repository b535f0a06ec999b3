"""Count and report unusable samples instead of crashing a multi-day run on one bad file."""

from __future__ import annotations

import logging
import multiprocessing
import tarfile

from .format import SkipSample

log = logging.getLogger("sla2_train.data")

# What this process has warned about: training reopens a damaged shard every epoch (or pass over a share), and one
# warning per (reason, sample, shard) says all there is; the counter still counts every skip.
_WARNED: set[tuple[str, str | None, str | None]] = set()

# Fixed reasons so the counter can live in shared memory (one slot each) across DataLoader workers.
REASONS = ("corrupt_shard", "missing_member", "undecodable", "bad_shape", "non_finite")


class SkipCounter:
    """Per-process (per-rank) counts shared with this process's DataLoader workers.

    The shared array is created lazily: created in __init__ it would be pickled with the
    DataModule (e.g. by ddp_spawn), which multiprocessing forbids for synchronised objects.
    """

    def __init__(self) -> None:
        self._array = None

    def _shared(self):
        """Must first run in the process that owns the DataLoader: workers then inherit the same array."""
        if self._array is None:
            self._array = multiprocessing.get_context().Array("q", len(REASONS))
        return self._array

    def add(self, reason: str, n: int = 1) -> None:
        array = self._shared()
        with array.get_lock():
            array[REASONS.index(reason)] += n

    def counts(self) -> dict[str, int]:
        array = self._shared()
        with array.get_lock():
            return {reason: int(array[i]) for i, reason in enumerate(REASONS)}

    def total(self) -> int:
        return sum(self.counts().values())


def classify(exn: BaseException) -> str | None:
    """The skip reason for a data error, or None for anything else (a bug must surface, not be counted)."""
    if isinstance(exn, SkipSample):
        return exn.reason
    # What the tar layer raises for a truncated stream, bad header, unreadable file or duplicate member
    # (webdataset raises ValueError for the latter): the shard, or its part after the damage, is unreadable.
    if isinstance(exn, (tarfile.TarError, EOFError, OSError, ValueError)):
        return "corrupt_shard"
    return None


def make_handler(counter: SkipCounter, quiet: bool = False):
    """A webdataset exception handler: count, one warning line the first time, continue (quiet: only continue)."""

    def handler(exn: BaseException) -> bool:
        reason = classify(exn)
        if reason is None:
            raise exn
        if quiet:
            return True
        counter.add(reason)
        key = getattr(exn, "key", None)
        detail = str(exn.args[0]) if exn.args else type(exn).__name__
        # webdataset appends the shard url to exn.args; name it so the user can find the bad file.
        urls = [a for a in exn.args[1:] if isinstance(a, str)]
        where = f" sample {key}" if key else ""
        where += f" in {urls[-1]}" if urls else ""
        seen = (reason, key, urls[-1] if urls else None)
        if seen in _WARNED:
            return True
        _WARNED.add(seen)
        log.warning("skipped (%s)%s: %s", reason, where, detail[:300])
        return True

    return handler
