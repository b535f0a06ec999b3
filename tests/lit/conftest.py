import importlib.util
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[2]


def _compose(*overrides: str, name: str = "config"):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.fixture
def compose_config():
    """compose_config(*overrides) → the project's Hydra config, composed with the compose API."""
    return _compose


@pytest.fixture
def build_module():
    """build_module(*overrides) → (SLA2Module on the tiny model, config), fresh random weights."""

    def build(*overrides: str):
        cfg = _compose("model=tiny", "logger=none", *overrides)
        torch.manual_seed(torch.seed() % 2**31)
        return instantiate(cfg.module), cfg

    return build


@pytest.fixture
def make_batch():
    """make_batch(cfg, batch) → a fresh random batch in the data contract (padded, masked text)."""

    def make(cfg, batch: int = 2):
        c, f, h, w = cfg.model.latent_shape
        lengths = torch.randint(1, cfg.model.text_len + 1, (batch,))
        mask = torch.arange(cfg.model.text_len)[None] < lengths[:, None]
        text = torch.randn(batch, cfg.model.text_len, cfg.model.text_dim) * mask[..., None]
        return {"latents": torch.randn(batch, c, f, h, w), "text_embeds": text, "text_mask": mask,
                "keys": [f"s{i}" for i in range(batch)]}

    return make


def _load_entry(name: str):
    spec = importlib.util.spec_from_file_location(f"sla2_entry_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def train_entry():
    """The repo's train.py as a module (its Hydra main takes a composed config directly)."""
    return _load_entry("train")


@pytest.fixture(scope="session")
def eval_entry():
    return _load_entry("eval")


@pytest.fixture
def isolated_logging(monkeypatch):
    """Root handlers that other tests' Hydra runs left behind write to streams pytest has since closed."""
    kept = [h for h in logging.root.handlers if type(h).__module__.startswith("_pytest")]
    monkeypatch.setattr(logging.root, "handlers", kept)


@pytest.fixture
def run_args(tmp_path):
    """train.py overrides for a quick in-process CPU run of the tiny model into tmp_path."""
    return [
        "model=tiny", "logger=csv", f"output_root={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.num_workers=0", "trainer.limit_val_batches=0", "callbacks.progress.refresh_rate=0",
    ]


def free_port() -> int:
    # torchrun's static rendezvous hands its port to every worker as is: port 0 would not be resolved.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tcp_port() -> int:
    """A free local TCP port for a process group's rendezvous."""
    return free_port()


def torchrun(
    script: str | Path, *args: str, cwd: Path, nproc: int = 2, timeout: int = 180
) -> subprocess.CompletedProcess:
    """`script` under torchrun with `nproc` processes, one CPU thread each."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", str(script), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def torchrun_train():
    """torchrun_train(cwd, *overrides, nproc=2) → train.py on the tiny model with `overrides` (CompletedProcess)."""

    def run(cwd: Path, *overrides: str, nproc: int = 2) -> subprocess.CompletedProcess:
        return torchrun(ROOT / "train.py", "model=tiny", "data.num_workers=0", "trainer.limit_val_batches=0",
                        "callbacks.progress.refresh_rate=0", *overrides, cwd=cwd, nproc=nproc)

    return run
