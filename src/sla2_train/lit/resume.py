"""Whether a run continues an earlier one: the one place that decides it (train.py and the W&B logger ask)."""

from __future__ import annotations

from pathlib import Path

LAST = "last.ckpt"


def checkpoint_to_resume(ckpt_dir: str | None, resume: bool) -> str | None:
    """<ckpt_dir>/last.ckpt when `resume` is on and that file exists, else None (the run starts fresh)."""
    if not (resume and ckpt_dir):
        return None
    last = Path(ckpt_dir) / LAST
    return str(last) if last.exists() else None
