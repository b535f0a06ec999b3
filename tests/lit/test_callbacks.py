"""The default callbacks: skipped samples reach the run's metrics."""

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import SingleDeviceStrategy

from sla2_train.lit.callbacks import SkippedSamplesLogger


class _Data(pl.LightningDataModule):
    """Reports skips the way LatentDataModule does: fixed reasons, counts growing as batches are read."""

    def __init__(self):
        super().__init__()
        self.read = 0

    def train_dataloader(self):
        data = self

        class Batches(torch.utils.data.IterableDataset):
            def __iter__(self):
                for _ in range(100):
                    data.read += 1
                    yield torch.randn(3)

        return torch.utils.data.DataLoader(Batches(), batch_size=None)

    @property
    def skipped(self):
        return {"corrupt_shard": self.read // 2, "bad_shape": self.read // 3}


class _Probe(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3))

    def training_step(self, batch, _):
        return (self.w * batch).sum() ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_default_callbacks_log_skipped_samples(compose_config, tmp_path):
    callbacks = instantiate(compose_config("logger=none", f"output_root={tmp_path}").callbacks)
    assert any(isinstance(c, SkippedSamplesLogger) for c in callbacks.values())
    data, steps = _Data(), int(torch.randint(5, 12, ()))
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[c for c in callbacks.values() if isinstance(c, SkippedSamplesLogger)])
    trainer.fit(_Probe(), datamodule=data)
    metrics = trainer.callback_metrics
    assert metrics["train/skipped/corrupt_shard"] == data.read // 2
    assert metrics["train/skipped/bad_shape"] == data.read // 3
    assert metrics["train/skipped/total"] == data.read // 2 + data.read // 3


class _NoCollectives(SingleDeviceStrategy):
    """A one-process run whose process group cannot reduce host tensors, as NCCL under one-process FSDP."""

    def reduce(self, tensor, *args, **kwargs):
        raise RuntimeError("No backend type associated with device type cpu")


def test_one_process_sums_skipped_samples_without_a_collective():
    data, steps = _Data(), int(torch.randint(3, 8, ()))
    trainer = pl.Trainer(max_steps=steps, strategy=_NoCollectives(device=torch.device("cpu")), logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[SkippedSamplesLogger()])
    trainer.fit(_Probe(), datamodule=data)
    assert trainer.global_step == steps
    assert trainer.callback_metrics["train/skipped/total"] == data.read // 2 + data.read // 3
