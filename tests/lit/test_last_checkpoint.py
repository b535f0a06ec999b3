"""last.ckpt: saved on a time interval as well as a step interval, on SIGTERM, and never left half-written."""

import io
import os
import signal
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sla2_train.lit import SLA2Module
from sla2_train.lit import callbacks as cb


class _Probe(pl.LightningModule):
    """A few parameters, random batches; `on_step(step)` runs inside every training step."""

    def __init__(self, on_step=lambda step: None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4))
        self.on_step = on_step

    def training_step(self, batch, _):
        self.on_step(self.global_step)
        return ((self.w - batch) ** 2).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _checkpoint(folder: Path, **kwargs) -> cb.LastCheckpoint:
    return cb.LastCheckpoint(dirpath=folder, filename="step{step:06d}", save_top_k=0, save_last=True,
                             enable_version_counter=False, **kwargs)


def _trainer(max_steps: int, callbacks, **kwargs) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks, **kwargs)


def _saved_step(path: Path) -> int | None:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"] if path.exists() else None


class _Record(pl.Callback):
    """The step held by last.ckpt when each batch starts, i.e. after the previous batch's saves (Lightning runs
    checkpoint callbacks after all others, so a batch-end probe would see the state before them)."""

    def __init__(self, path: Path):
        self.path, self.steps = path, []

    def on_train_batch_start(self, trainer, *_):
        self.steps.append(_saved_step(self.path))


def test_time_interval_saves_between_step_intervals(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(cb, "monotonic", lambda: clock[0])
    seconds_per_step = float(torch.randint(20, 30, ()))  # 2 steps < 1 minute <= 3 steps

    def tick(step):
        clock[0] += seconds_per_step

    record = _Record(tmp_path / "last.ckpt")
    ckpt = _checkpoint(tmp_path, every_n_train_steps=1000, every_n_minutes=1)
    _trainer(10, [ckpt, record]).fit(_Probe(tick))
    assert record.steps == [None, None, None, 3, 3, 3, 6, 6, 6, 9]
    assert _saved_step(tmp_path / "last.ckpt") == 10  # and the end of training


def test_step_interval_alone_when_no_time_interval(tmp_path):
    record = _Record(tmp_path / "last.ckpt")
    _trainer(7, [_checkpoint(tmp_path, every_n_train_steps=3), record]).fit(_Probe())
    assert record.steps == [None, None, None, 3, 3, 3, 6]
    assert _saved_step(tmp_path / "last.ckpt") == 7


def test_bad_interval_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="every_n_minutes"):
        _checkpoint(tmp_path, every_n_minutes=0)


class _DiesWhileWriting(TorchCheckpointIO):
    """Writes half of the checkpoint's bytes to the path it was given, then dies (a kill during the write)."""

    armed = False

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if not self.armed:
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise RuntimeError("killed while saving")


def test_a_run_killed_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    io_plugin = _DiesWhileWriting()
    first = _Probe()
    _trainer(2, [_checkpoint(tmp_path, every_n_train_steps=2)], plugins=[io_plugin]).fit(first)
    last = tmp_path / "last.ckpt"
    before = last.read_bytes()
    io_plugin.armed = True
    with pytest.raises(RuntimeError, match="killed while saving"):
        _trainer(4, [_checkpoint(tmp_path, every_n_train_steps=2)], plugins=[io_plugin]).fit(
            _Probe(), ckpt_path=str(last))
    assert last.read_bytes() == before
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2 and torch.equal(saved["state_dict"]["w"], first.w.detach())


def test_atomic_replace_of_a_sharded_checkpoint_folder(tmp_path):
    final, partial = tmp_path / "last.ckpt", tmp_path / "last.ckpt.partial"
    for folder, text in ((final, "old"), (partial, "new")):
        folder.mkdir()
        (folder / "shard-0").write_text(text)
    cb.replace_atomically(str(partial), str(final))
    assert (final / "shard-0").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def _preempted_at(stop_at: int, signal_the_job, args, compose_config, train_entry, monkeypatch, caplog) -> None:
    """Run train.py, call `signal_the_job()` inside step `stop_at`, and check that last.ckpt holds that step,
    finished, and the log says so."""
    step = SLA2Module.training_step

    def preempted(self, batch, batch_idx):
        if self.global_step == stop_at:
            signal_the_job()
        return step(self, batch, batch_idx)

    monkeypatch.setattr(SLA2Module, "training_step", preempted)
    cfg = compose_config(*args, "trainer.max_steps=50", "callbacks.checkpoint.every_n_train_steps=1000")
    with caplog.at_level("INFO"), pytest.raises(SystemExit):
        train_entry.main(cfg)
    last = Path(cfg.ckpt_dir) / "last.ckpt"
    assert _saved_step(last) == stop_at + 1
    assert f"terminated (SIGTERM): saved {last} at step {stop_at + 1}" in caplog.text


def test_sigterm_saves_the_finished_step(run_args, compose_config, train_entry, monkeypatch, caplog):
    """A preempted job gets SIGTERM: the step in flight finishes, last.ckpt holds it, the same command resumes."""
    _preempted_at(int(torch.randint(2, 5, ())), lambda: os.kill(os.getpid(), signal.SIGTERM), run_args,
                  compose_config, train_entry, monkeypatch, caplog)


def test_sigterm_to_every_process_of_the_job_still_saves(run_args, compose_config, train_entry, monkeypatch,
                                                         caplog):
    """A scheduler that signals every process of the job (SLURM at its time limit, `kill -TERM -PGID`) reaches
    the DataLoader workers too: they leave SIGTERM to the main process, which finishes its step and saves, rather
    than dying first and failing the step on a dead worker. (PyTorch's workers exit quietly on a SIGTERM from
    their parent and die by it from anyone else, so the signal comes from another process here.)"""
    import multiprocessing
    import subprocess

    def signal_every_process():
        workers = multiprocessing.active_children()
        assert workers, "the run should have DataLoader workers"
        subprocess.run(["kill", "-TERM", *(str(w.pid) for w in workers)], check=True)
        time.sleep(1)  # delivered and acted on (not joined: reaping a dead worker would hide it from torch)
        os.kill(os.getpid(), signal.SIGTERM)

    args = [a for a in run_args if not a.startswith("data.num_workers")] + ["data.num_workers=1"]
    _preempted_at(2, signal_every_process, args, compose_config, train_entry, monkeypatch, caplog)
