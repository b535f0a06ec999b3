"""conf/data/*.yaml compose with the model group's keys and instantiate working DataModules."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue

from sla2_train.data import LatentDataModule, write_synthetic_shards
from sla2_train.data.errors import DataError
from sla2_train.lit.callbacks import SkippedSamplesLogger

CONF = str(Path(__file__).resolve().parents[2] / "conf")
TINY = ["+model.latent_shape=[4,3,14,18]", "+model.text_dim=32", "+model.text_len=16"]


def _data_cfg(group, *overrides):
    # Only the data group is composed; the model keys stand in for conf/model/tiny.yaml.
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(overrides=[f"+data={group}", *TINY, *overrides]).data


def test_synthetic_config_builds_matching_shards(tmp_path):
    cfg = _data_cfg("synthetic", f"data.cache_dir={tmp_path}", "data.num_workers=0")
    dm = instantiate(cfg)
    assert isinstance(dm, LatentDataModule)
    batch = next(iter(dm.train_dataloader()))
    assert batch["latents"].shape == (2, 4, 3, 14, 18)
    assert batch["text_embeds"].shape == (2, 16, 32) and batch["text_mask"].shape == (2, 16)


def test_webdataset_config_requires_shards_and_checks_dims(tmp_path):
    with pytest.raises(MissingMandatoryValue):
        instantiate(_data_cfg("webdataset"))
    write_synthetic_shards(tmp_path / "s", 4, latent_shape=(4, 3, 14, 18), text_dim=32, max_text_len=16, samples_per_shard=2)
    dm = instantiate(_data_cfg("webdataset", f"data.train_shards={tmp_path}/s", "data.num_workers=0"))
    dm.setup("fit")
    assert dm.latent_shape == (4, 3, 14, 18)
    # Shards made for another model are refused when the DataModule is built, naming both sides and the keys.
    for override, words in (("model.text_dim=64", "text_dim 32 .* text_dim 64"),
                            ("model.latent_shape=[16,21,60,104]", r"latents \[4, 3, 14, 18\] .* latents \[16, 21, 60, 104\]")):
        with pytest.raises(InstantiationException, match=words) as err:
            instantiate(_data_cfg("webdataset", f"data.train_shards={tmp_path}/s", override))
        assert isinstance(err.value.__cause__, DataError)
        assert "model.latent_shape / model.text_dim" in str(err.value.__cause__)


class _Probe(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4))
        self.train_keys, self.val_passes = [], []

    def training_step(self, batch, _):
        self.train_keys += batch["keys"]
        pooled = batch["latents"].mean(dim=(2, 3, 4))
        return ((pooled - self.w) ** 2).mean() + 0 * batch["text_embeds"][batch["text_mask"]].sum()

    def on_validation_epoch_start(self):
        self.val_passes.append([])

    def validation_step(self, batch, _):
        self.val_passes[-1] += batch["keys"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_consumes_exact_epochs(tmp_path):
    cfg = _data_cfg("synthetic", f"data.cache_dir={tmp_path}", "data.epoch_length=3", "data.num_val=5")
    dm, probe = instantiate(cfg), _Probe()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[SkippedSamplesLogger()])
    trainer.fit(probe, datamodule=dm)
    assert len(probe.train_keys) == 2 * 3 * 2  # epochs × epoch_length × batch_size
    assert len(set(probe.train_keys)) > 3  # each epoch its own shuffled share, not one batch repeated
    assert len(probe.val_passes) == 2
    for keys in probe.val_passes:  # each validation pass: every val sample exactly once
        assert len(keys) == 5 and len(set(keys)) == 5 and all(k.startswith("val") for k in keys)
    assert trainer.callback_metrics["train/skipped/corrupt_shard"] == 0
