"""init_from / eval's ckpt: weights load only into a model with the attention options they were trained for."""

import pytest
import torch
from hydra.errors import InstantiationException

from sla2_train.export.loading import load_weights
from sla2_train.models import ConfigError


def save_like_lightning(module, path):
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)


def test_checkpoint_of_another_sparsity_is_refused(build_module, tmp_path):
    # Sparsity changes no parameter shape: without the check the router of a 90% run loads into a 95% model.
    trained, _ = build_module("stage=distill", "attention.sparsity=0.9")
    ckpt = tmp_path / "stage1.ckpt"
    save_like_lightning(trained, ckpt)
    build_module("stage=qat", "attention.sparsity=0.9", f"init_from={ckpt}")  # same options: loads
    with pytest.raises(InstantiationException) as err:
        build_module("stage=qat", "attention.sparsity=0.95", f"init_from={ckpt}")
    cause = err.value.__cause__
    assert isinstance(cause, ConfigError) and "sparsity=0.9" in str(cause) and "0.95" in str(cause)


def test_eval_names_its_own_config_key(build_module, tmp_path):
    trained, _ = build_module("attention.block_k=8")
    ckpt = tmp_path / "a.ckpt"
    save_like_lightning(trained, ckpt)
    other, _ = build_module()
    with pytest.raises(ConfigError, match=r"^ckpt .*block_k=8"):
        load_weights(other.model, ckpt, key="ckpt")
