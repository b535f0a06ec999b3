"""train.py under torchrun with two CPU processes (gloo): the DDP path a GPU run takes, minus the GPU."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    # torchrun's static rendezvous hands its port to every worker as is: port 0 would not be resolved.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "stage,extra",
    [("distill", []), ("qat", []), ("distill", ["stage.objective.layers_per_step=1"])],
    ids=["distill", "qat", "distill-sampled-layers"],
)
def test_two_process_ddp_trains_and_checkpoints(tmp_path, stage, extra):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "--master_addr=127.0.0.1",
        str(ROOT / "train.py"), "model=tiny", "trainer=ddp_cpu", "trainer.max_steps=3", "logger=csv", f"stage={stage}",
        f"output_root={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0",
        "trainer.limit_val_batches=0", "callbacks.progress.refresh_rate=0", *extra,
    ]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpts = list((tmp_path / "out").glob(f"*-{stage}-*/checkpoints/last.ckpt"))
    assert len(ckpts) == 1, "both ranks must agree on one output folder"
    saved = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
