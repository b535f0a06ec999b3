"""W&B (offline): one run per output folder; a multirun's jobs never share a run; a resumed run continues its own."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline with its settings and caches under tmp_path; returns the environment for subprocesses."""
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        env[name] = str(tmp_path / "wandb-home" / name.lower())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **env}


def _runs(output_dir: Path) -> list[Path]:
    return sorted((output_dir / "wandb").glob("offline-run-*"))


def _run_id(run: Path) -> str:
    return run.name.rsplit("-", 1)[-1]


def _logged(run: Path) -> bytes:
    return b"".join(f.read_bytes() for f in run.glob("*.wandb"))


def test_each_multirun_job_gets_its_own_wandb_run(tmp_path, wandb_offline):
    sparsities = ("0.9", "0.95")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", f"attention.sparsity={','.join(sparsities)}", "model=tiny",
         "logger=wandb", "trainer.max_steps=2", "trainer.limit_val_batches=0", "data.num_workers=0",
         "callbacks.progress.refresh_rate=0", f"output_root={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, env=wandb_offline, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = []
    for s in sparsities:
        folder = tmp_path / "out" / f"tiny-distill-sla2-{s}"
        runs = _runs(folder)
        assert len(runs) == 1, f"{folder} has W&B runs {runs}"
        assert _run_id(runs[0]) == (folder / "wandb_run_id").read_text().strip()
        logged = _logged(runs[0])
        assert f'"sparsity":{s},'.encode() in logged  # this job's config ...
        assert all(f'"sparsity":{o},'.encode() not in logged for o in sparsities if o != s)  # ... and no other's
        assert f"tiny-distill-sla2-{s}".encode() in logged
        ids.append(_run_id(runs[0]))
    assert len(set(ids)) == len(ids)


def test_a_resumed_run_continues_its_wandb_run(run_args, compose_config, train_entry, wandb_offline):
    import wandb

    args = [*run_args, "logger=wandb"]
    first = compose_config(*args, "trainer.max_steps=1")
    output = Path(first.output_dir)
    train_entry.main(first)
    assert wandb.run is None  # finished at the end of the job
    run_id = (output / "wandb_run_id").read_text().strip()
    train_entry.main(compose_config(*args, "trainer.max_steps=2"))  # resumes from last.ckpt
    assert [_run_id(r) for r in _runs(output)] == [run_id, run_id]
    train_entry.main(compose_config(*args, "trainer.max_steps=1", "resume=false"))  # starts over: a new run
    fresh = (output / "wandb_run_id").read_text().strip()
    assert fresh != run_id and sorted(_run_id(r) for r in _runs(output)) == sorted([run_id, run_id, fresh])
