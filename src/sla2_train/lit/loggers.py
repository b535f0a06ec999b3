"""W&B runs that follow training runs: one W&B run per output folder, continued when training resumes."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from .resume import checkpoint_to_resume

RUN_ID_FILE = "wandb_run_id"
# wandb.Settings.mode's values, named here so that the config type check refuses any other (an exported but empty
# WANDB_MODE, which `${oc.env:WANDB_MODE,offline}` passes on) with the key, before wandb's own multi-line error
WandbMode = Literal["online", "offline", "shared", "disabled", "dryrun", "run"]


class QuietWandbLogger(WandbLogger):
    """Lightning's WandbLogger passes `anonymous=None` to wandb.init, and every wandb release since 0.19 answers
    "The anonymous setting has no effect and will be removed" on each run; the key is simply not passed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


def wandb_logger(save_dir: str, ckpt_dir: str | None, resume: bool, mode: WandbMode, **kwargs) -> WandbLogger:
    """A WandbLogger writing into `save_dir`, whose run id is kept in `<save_dir>/wandb_run_id`.

    A run that resumes from a checkpoint logs into the W&B run it started (same id, resume="allow"), so one
    training stays one W&B run across preemptions; a run that starts fresh gets a new id.
    """
    id_file = Path(save_dir) / RUN_ID_FILE
    run_id = None
    if checkpoint_to_resume(ckpt_dir, resume) and id_file.is_file():
        run_id = id_file.read_text().strip() or None
    if run_id is None:
        run_id = secrets.token_hex(4)  # W&B's own ids are 8 characters too
        if rank_zero_only.rank == 0:  # the other ranks log nothing (Lightning gives them a dummy run)
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id + "\n")
    return QuietWandbLogger(save_dir=save_dir, id=run_id, resume="allow", mode=mode, **kwargs)


def finish_runs(loggers: Iterable[Logger], failed: bool) -> None:
    """End this job's W&B run. wandb keeps one run per process, and in a Hydra multirun (one process, one job
    after another) the next job's WandbLogger would log into this one instead of starting its own."""
    if not any(isinstance(logger, WandbLogger) for logger in loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
