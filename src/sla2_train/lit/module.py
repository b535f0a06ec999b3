"""The LightningModule: one class for every stage; the stage config says what trains and on which loss."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from sla2_train.diffusion import FlowMatching
from sla2_train.export.checkpoint_format import EMA_KEY, META_KEY, checkpoint_metadata
from sla2_train.export.loading import load_weights
from sla2_train.models import ConfigError, set_attention_mode

from .alpha_calibration import calibrate_training_model
from .param_groups import optimizer_groups
from .run_summary import batch_and_lr
from .stage import Stage
from .stats import alpha_means

log = logging.getLogger(__name__)

_VALIDATION_STREAM = 1  # keeps validation's seeds apart from the (seed, rank, step) seeds of a resumed run


class SLA2Module(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        stage: Stage,
        flow: FlowMatching,
        init_from: str | None = None,
    ):
        super().__init__()
        # diffusers' from_pretrained returns the model in eval mode, and Lightning keeps each module's mode when
        # fit starts: a model loaded from a folder would train in eval mode (and warn about 186 such modules)
        self.model = model.train()
        self.stage = stage
        self.flow = flow
        self._seed = torch.initial_seed()  # train.py's seed_everything(cfg.seed), the same on every rank
        if init_from:
            load_weights(model, init_from)
        # Calibration at the start is for α that nothing has trained yet; a resumed run starts at global_step > 0.
        calibration = stage.calibrate_alpha
        if isinstance(calibration, bool):
            raise ConfigError(
                f"stage.calibrate_alpha={calibration} is no longer a switch: use null (off) or an AlphaCalibration "
                "node (conf/stage/distill.yaml), e.g. stage.calibrate_alpha.when=start"
            )
        self._needs_calibration = calibration is not None and calibration.when == "start" and not init_from
        self._step_loss: torch.Tensor | None = None  # the step's loss, checked once its backward is queued
        stage.apply(model)

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:  # the optimizers are built by now
            log.info("training: %s", batch_and_lr(self.trainer))

    def on_train_start(self) -> None:
        # Every rank got the same seed, so every rank drew the same σ and ε for its own latents: a global
        # batch of B·world_size latents saw only B noise levels. Reseed per rank, and by the step reached so
        # a resumed run does not replay its first steps' noise. A fresh single-process run keeps its stream.
        rank, step = self.global_rank, self.global_step
        if self.trainer.world_size > 1 or step > 0:
            torch.manual_seed(hash((self._seed, rank, step)) & (2**63 - 1))
        ema = self.stage.ema
        if ema is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            # each rank holds only its shards: the average would be per-shard and export could not read it
            raise ConfigError("stage.ema is not supported with trainer=fsdp; set stage.ema=null")
        if ema is not None and not ema.shadow:  # a resumed run restored its average in on_load_checkpoint
            ema.reset(self.model)
        self._averaged_step = step

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.stage.tau_schedule is not None:
            tau = self.stage.tau_schedule(self.global_step)
            set_attention_mode(self.model, tau=tau)
            self.log("train/tau", torch.tensor(float(tau)), batch_size=batch["latents"].shape[0])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # With gradient accumulation most micro-batches end without an optimizer step: average only after one.
        ema = self.stage.ema
        if ema is not None and self.global_step != self._averaged_step:
            ema.update(self.model)
            self._averaged_step = self.global_step

    def configure_callbacks(self):
        calibration = self.stage.calibrate_alpha
        callback = None if calibration is None else calibration.callback()
        return [] if callback is None else [callback]

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self._needs_calibration and self.global_step == 0:
            layers = calibrate_training_model(self, batch, self.stage.calibrate_alpha.fit)
            log.info("calibrated α of %d layers on the first batch", layers)
        self._needs_calibration = False
        if self.stage.caption_dropout is not None:
            batch = self.stage.caption_dropout(batch)
        loss, logs = self.stage.objective(self.model, batch, self.flow)
        bs = batch["latents"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        if self._trainer is not None and self.trainer.optimizers:
            # Logged here rather than by LearningRateMonitor, which refuses to run without a logger. A host
            # tensor, because Lightning turns a Python number into a device tensor, a copy that waits for the GPU.
            self.log("train/lr", torch.tensor(float(self.trainer.optimizers[0].param_groups[0]["lr"])), batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=bs)
        alphas = alpha_means(self.model)
        if alphas:
            self.log("train/alpha_mean", torch.stack(alphas).mean(), batch_size=bs)
            self.log_dict({f"train/alpha/layer_{i}": a for i, a in enumerate(alphas)}, batch_size=bs)
        return loss

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self._step_loss = loss.detach()

    def on_after_backward(self) -> None:
        # A non-finite loss stops the run before its optimizer step, so no checkpoint holds weights it poisoned.
        # Checked here rather than in training_step: reading the loss waits for the GPU, and here the backward is
        # already queued behind the forward, so the GPU keeps working through the wait instead of idling between
        # forward and backward.
        loss = self._step_loss
        if loss is not None and not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {self.stage.name} loss {loss.item()} at step {self.global_step}")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with self._validation_draws(batch_idx):
            loss, _ = self.stage.objective(self.model, batch, self.flow)
            bs = batch["latents"].shape[0]
            self.log("val/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
            if self.stage.monitor is not None:
                self.log_dict(self.stage.monitor(self.model, batch, self.flow), batch_size=bs, sync_dist=True)

    @contextmanager
    def _validation_draws(self, batch_idx: int):
        # The losses draw σ, ε, sampled layers and query blocks from the global generators (the CPU's, and
        # the module's GPU's where it has one). Validation draws the same ones for the same batch at every
        # pass, so a validation curve shows what training changed rather than new noise levels (the attention
        # error moves with σ more than over a few hundred steps), and it leaves the training stream where it
        # was, so how often a run validates does not change how it trains.
        # Seeds exactly the generators fork_rng puts back: torch.manual_seed would reseed every visible GPU's,
        # and a process of a multi-GPU job sees them all.
        cuda = self.device.type == "cuda"
        seed = hash((self._seed, self.global_rank, batch_idx, _VALIDATION_STREAM)) & (2**63 - 1)
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(self.device):
                    torch.cuda.manual_seed(seed)
            yield

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"stage {self.stage.name!r} leaves nothing to train")
        optimizer = self.stage.optimizer(optimizer_groups(self.model, self.stage.train, self.stage.group_lr, params))
        if self.stage.scheduler is None:
            return optimizer
        # interval "step": one scheduler step per optimizer step (after accumulation), the unit warmup counts in
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.stage.scheduler(optimizer), "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        # Lightning's FSDP precision plugin refuses norm clipping (torch's clip_grad_norm_ on a rank's shards
        # would clip by that rank's norm), so trainer=fsdp with gradient_clip_val failed at the first step.
        # The FSDP root's own clip_grad_norm_ reduces the norm over ranks.
        strategy = self.trainer.strategy
        if gradient_clip_val and isinstance(strategy, FSDPStrategy) and (gradient_clip_algorithm or "norm") == "norm":
            strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # How the attention was built and trained (α mode, sparsity, blocks) and the transformer's architecture
        # travel with the weights, so sla2-export needs nothing but the checkpoint.
        checkpoint[META_KEY] = checkpoint_metadata(self.model, self.stage.name)
        if self.stage.ema is not None and self.stage.ema.shadow:
            checkpoint[EMA_KEY] = self.stage.ema.state_dict(self.model)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming: the average continues from the saved one. A checkpoint without one (a run that had no EMA)
        # starts the average at the restored weights in on_train_start.
        if self.stage.ema is not None and checkpoint.get(EMA_KEY):
            self.stage.ema.load_state_dict(checkpoint[EMA_KEY])
