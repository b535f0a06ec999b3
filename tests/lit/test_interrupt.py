"""Ctrl-C on a training run: the step in flight finishes, last.ckpt holds it, and the same command resumes."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from sla2_train.lit import SLA2Module

ROOT = Path(__file__).resolve().parents[2]


def _logged_steps(metrics: Path) -> int:
    """Training steps the CSV logger has written so far (it flushes every step with the overrides below)."""
    if not metrics.exists():
        return 0
    with metrics.open() as f:
        return max((int(row["step"]) + 1 for row in csv.DictReader(f) if row.get("train/loss")), default=0)


def test_sigint_saves_the_step_reached_and_the_rerun_resumes_there(run_args, compose_config, train_entry,
                                                                   monkeypatch, caplog, tmp_path):
    overrides = [*run_args, "+logger.csv.flush_logs_every_n_steps=1", "callbacks.checkpoint.every_n_train_steps=1000",
                 "callbacks.checkpoint.every_n_minutes=null"]
    cfg = compose_config(*overrides, "trainer.max_steps=100000")
    metrics = Path(cfg.output_dir) / "csv" / "version_0" / "metrics.csv"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides, "trainer.max_steps=100000"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while _logged_steps(metrics) < 3:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the run did not reach step 3"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode != 0, out[-3000:]  # stopped, not finished
    assert "interrupted: saving a checkpoint after this step" in out
    saved = re.search(r"interrupted: saved (\S+) at step (\d+); the same command resumes from it", out)
    assert saved, out[-3000:]
    last, step = Path(saved.group(1)), int(saved.group(2))
    assert last == Path(cfg.ckpt_dir) / "last.ckpt" and step >= 3
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == step

    seen = {}
    monkeypatch.setattr(SLA2Module, "on_train_start", lambda self: seen.setdefault("step", self.global_step))
    with caplog.at_level("INFO", logger="train"):
        train_entry.main(compose_config(*overrides, f"trainer.max_steps={step + 2}"))
    assert seen["step"] == step
    assert f"resuming from {last}" in caplog.text
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == step + 2


def test_a_run_without_checkpoint_says_it_starts_fresh(run_args, compose_config, train_entry, caplog):
    cfg = compose_config(*run_args, "trainer.max_steps=1")
    with caplog.at_level("INFO", logger="train"):
        train_entry.main(cfg)
    assert f"starting fresh: no checkpoint in {cfg.ckpt_dir}" in caplog.text
