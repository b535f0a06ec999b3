"""Mistakes come back as one line naming the key the user typed; a plain run prints none of our avoidable noise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from sla2_train.cli_errors import config_errors_as_one_line, one_line, run_errors_as_one_line
from sla2_train.config_types import ConfigTypeError, check_config_types
from sla2_train.data.skips import SkipCounter
from sla2_train.data.streams import TrainStream

ROOT = Path(__file__).resolve().parents[1]


def _cfg():
    return OmegaConf.create({
        "model": {"attn_block_q": 32, "latent_shape": [4, 3, 14, 18]},
        "attention": {"_target_": "sla2_train.models.SLA2Swap", "sparsity": 0.9, "block_q": "${model.attn_block_q}",
                      "topk": "hard"},
        "stage": {"name": "qat"},
        "module": {"stage": "${stage}", "model": {"attention": "${attention}"}},
        "data": {"_target_": "sla2_train.data.LatentDataModule", "train_shards": "/x", "batch_size": 1,
                 "latent_shape": "${model.latent_shape}"},
        "trainer": {"_target_": "lightning.pytorch.Trainer", "max_steps": 8, "precision": "32-true"},
    })


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"attention.sparsity": "high"}, "attention.sparsity must be a number, got 'high'"),
        # Set through an interpolation: the key named is the one the user sets.
        ({"model.attn_block_q": "big"}, "model.attn_block_q must be an integer, got 'big'"),
        ({"data.batch_size": 2.5}, "data.batch_size must be an integer, got 2.5"),
        ({"model.latent_shape": [4, "x", 14, 18]}, "model.latent_shape must be a list of an integer"),
        ({"trainer.max_steps": "many"}, "trainer.max_steps must be an integer, got 'many'"),
        ({"trainer.precision": 33}, "trainer.precision must be"),
    ],
)
def test_value_types_are_checked_against_the_callable_naming_the_typed_key(override, expected):
    cfg = _cfg()
    check_config_types(cfg)  # the defaults pass
    for key, value in override.items():
        OmegaConf.update(cfg, key, value)
    with pytest.raises(ConfigTypeError) as err:
        check_config_types(cfg)
    assert str(err.value).startswith(expected), str(err.value)


def test_one_line_names_the_key_the_user_typed():
    cfg = _cfg()
    # A message naming "group: option" gets the dotted key; Hydra's node for an interpolation maps to its source.
    assert one_line(ValueError("attention: sparsity must be in (0, 1), got 1.5"), cfg) == (
        "attention: sparsity must be in (0, 1), got 1.5 (config key: attention.sparsity)")
    assert one_line(ValueError("bad objective\n    full_key: module.stage"), cfg) == "bad objective (config key: stage)"
    assert one_line(ValueError("data.train_shards: no such shard folder: /x"), cfg) == (
        "data.train_shards: no such shard folder: /x")
    worker = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
              '  File "x.py", line 1, in f\nsla2_train.data.errors.DataError: data.train_shards: no usable sample')
    assert one_line(ValueError(worker), cfg) == "data.train_shards: no usable sample"


def test_config_errors_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        with config_errors_as_one_line(_cfg()):
            raise ValueError("attention: unknown topk 'sfot'; choose one of ['hard', 'soft']\nmore detail")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: attention: unknown topk 'sfot'; choose one of ['hard', 'soft'] (config key: attention.topk)\n")


def test_config_errors_are_one_line_where_the_hydra_config_has_no_job_folder(capsys):
    """A config composed with its Hydra node (the compose API in a notebook, a script, a test) sets HydraConfig
    without an output folder: the error is still one line, and no folder is looked for."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        HydraConfig.instance().set_config(compose("config", return_hydra_config=True))
    try:
        with pytest.raises(SystemExit) as exit_info:
            with config_errors_as_one_line():
                raise ValueError("stage.objective.router.weight must be > 0, got 0")
    finally:
        HydraConfig.instance().cfg = None
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: stage.objective.router.weight must be > 0, got 0\n"


def test_unusable_data_found_by_a_worker_is_one_line(tmp_path, capsys):
    for i in range(2):
        (tmp_path / f"s{i}.tar").write_bytes(torch.randint(0, 255, (2048,), dtype=torch.uint8).numpy().tobytes())
    stream = TrainStream([str(p) for p in sorted(tmp_path.glob("*.tar"))], batch_size=1, text_len=4,
                         counter=SkipCounter(), epoch_length=1)
    loader = DataLoader(stream, batch_size=None, num_workers=1)  # the error crosses the worker boundary
    with pytest.raises(SystemExit) as exit_info:
        with run_errors_as_one_line():
            next(iter(loader))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: data.train_shards: no usable sample in the last"), err


def test_a_plain_run_prints_none_of_the_warnings_we_cause(tmp_path):
    """W&B's "anonymous" notice, Lightning's empty-validation notice, PyTorch's worker-count warning."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "default"}
    cpus = len(os.sched_getaffinity(0))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "trainer.max_steps=2", "data.num_val=0", "data.num_train=4",
         "data.samples_per_shard=2", f"data.num_workers={cpus + 2}", "data.epoch_length=2",
         f"data.cache_dir={tmp_path / 'cache'}", "callbacks.progress.refresh_rate=0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for noise in ("anonymous setting", "Total length of `list` across ranks is zero", "worker processes in total"):
        assert noise not in out, out[-3000:]
    assert [p.name for p in (tmp_path / "outputs").glob("*/wandb")] == ["wandb"]  # where the README says W&B logs go


def test_an_empty_wandb_mode_is_refused_naming_the_key(monkeypatch):
    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("WANDB_MODE", "")  # exported but empty: the config's default does not apply
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config")
        with pytest.raises(ConfigTypeError) as err:
            check_config_types(cfg)
        assert str(err.value).startswith("logger.wandb.mode must be one of ['online', 'offline'"), str(err.value)
        assert str(err.value).endswith("got ''")
        monkeypatch.setenv("WANDB_MODE", "online")
        check_config_types(compose("config"))


def test_every_shipped_config_passes_the_type_check():
    from hydra import compose, initialize_config_dir

    conf = ROOT / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for group in ("trainer", "logger", "callbacks", "attention", "stage", "data", "model", "experiment"):
            for option in sorted(p.stem for p in (conf / group).glob("*.yaml")):
                extra = ["data.train_shards=/shards"] if option == "webdataset" else []
                check_config_types(compose("config", overrides=[f"{group}={option}", *extra]))
        check_config_types(compose("eval"))
        check_config_types(compose("prepare", overrides=["videos=/v", "out_dir=/o", "encoders.model_path=/m"]))
