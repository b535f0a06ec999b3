"""hydra/launcher=slurm: composes to a multi-GPU sbatch job; tasks get torchrun's environment; a two-job sweep
runs through submitit's local executor with two DDP processes per job."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra")
import submitit  # noqa: E402
from hydra_plugins.sla2_train_launcher.torchrun_launcher import torchrun_environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _hydra_config_reset():
    """compose_with_hydra sets the process's HydraConfig as a job would; later tests must not see it."""
    yield
    HydraConfig.instance().cfg = None


def compose_with_hydra(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def sbatch_script(monkeypatch, tmp_path, *overrides: str) -> str:
    """The sbatch script the slurm launcher submits for `overrides` (nothing is submitted)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for srun before building a job
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_with_hydra("hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    scripts = []

    def record(executor, fn, *iterables):
        assert len(iterables[0]) == 2  # one array job per sweep point
        scripts.append(executor._executor._make_submission_file_text("python -u -m submitit.core._submit", "0"))
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", record)
    launcher.launch([["attention.sparsity=0.9"], ["attention.sparsity=0.95"]], initial_job_idx=0)
    (script,) = scripts
    return script


def test_slurm_launcher_asks_for_nodes_times_gpus_one_task_each(monkeypatch, tmp_path):
    script = sbatch_script(
        monkeypatch, tmp_path, "trainer=ddp", "trainer.num_nodes=2", "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.partition=gpu", "hydra.launcher.account=proj", "hydra.launcher.qos=high",
        "hydra.launcher.timeout_min=90",
    )
    for line in ("--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=4", "--partition=gpu", "--account=proj",
                 "--qos=high", "--time=90", "--cpus-per-task=12"):
        assert f"#SBATCH {line}\n" in script, (line, script)


def test_slurm_launcher_defaults_to_one_full_node(monkeypatch, tmp_path):
    script = sbatch_script(monkeypatch, tmp_path, "trainer=ddp")
    assert "#SBATCH --nodes=1\n" in script and "#SBATCH --ntasks-per-node=8\n" in script
    assert "--partition" not in script and "--account" not in script


def test_each_task_gets_torchruns_environment(monkeypatch):
    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    job = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NODEID": "1", "SLURM_PROCID": "11", "SLURM_LOCALID": "3", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    for key in ("MASTER_PORT", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in job.items():
        monkeypatch.setenv(key, value)
    env = torchrun_environment()
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")} == {
        "RANK": "11", "LOCAL_RANK": "3", "GROUP_RANK": "1", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}
    assert env["MASTER_ADDR"] == "gpu07" and env["TORCHELASTIC_RUN_ID"] == "4242"
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NODEID", "0")
    assert torchrun_environment()["MASTER_PORT"] == env["MASTER_PORT"]  # every task of the job agrees
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    assert torchrun_environment()["MASTER_PORT"] != env["MASTER_PORT"]  # another job, another port
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    lightning_env = TorchElasticEnvironment()
    assert TorchElasticEnvironment.detect()
    assert (lightning_env.global_rank(), lightning_env.local_rank(), lightning_env.node_rank(),
            lightning_env.world_size()) == (11, 3, 1, 16)
    lightning_env.validate_settings(num_devices=8, num_nodes=2)
    with pytest.raises(ValueError):
        lightning_env.validate_settings(num_devices=8, num_nodes=1)


@pytest.mark.slow
def test_two_job_sweep_runs_through_the_local_executor_with_two_ranks_each(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    res = subprocess.run(
        [sys.executable, "train.py", "-m", "hydra/launcher=slurm_local", "hydra.launcher.tasks_per_node=2", "model=tiny",
         "trainer=ddp_cpu", "attention.sparsity=0.9,0.95", "trainer.max_steps=2", "logger=none",
         f"output_root={out}", f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0",
         "trainer.limit_val_batches=0", "callbacks.progress.refresh_rate=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for sparsity in ("0.9", "0.95"):
        ckpt = torch.load(out / f"tiny-distill-sla2-{sparsity}" / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=True)
        assert ckpt["global_step"] == 2 and ckpt["sla2"]["attention"]["sparsity"] == float(sparsity)
    logs = sorted((out / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 4  # two jobs × two tasks
    text = "".join(p.read_text() for p in logs)
    assert text.count("MEMBER: 1/2") == 2 and text.count("MEMBER: 2/2") == 2  # each job: one DDP group of two
