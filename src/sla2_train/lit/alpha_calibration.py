"""α in closed form from captured attention (docs/method.md, "α"): before stage 1 trains it, or after.

`stage.calibrate_alpha` (an `AlphaCalibration`, or null) says how and when:
- fit: what α is set to (sla2_train.attention.distill): `MeasuredMassFit`, the selected softmax mass, or
  `LeastAbsoluteFit` / `LeastSquaresFit`, the α that minimises the hard-mask mix's absolute / squared error
  (α → 1 where the linear branch only adds error);
- when: `start`, on the first batch of a fresh run (never on resume or `init_from`: such a run keeps its
  trained α), fitted to the untrained router's mask; or `end`, on the last batch after the last optimizer
  step, fitted to the mask the trained router will run with, before the final checkpoint is written. A run
  stopped before trainer.max_steps is fitted after its last step, on its last training batch: stopped during
  a step (trainer.max_time; a callback's on_train_batch_end) or after it (EarlyStopping on `val/router/*`).
Every rank fits its own batch, so the result is averaged over ranks to keep the replicas identical.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import lightning.pytorch as pl
import torch
from torch import nn

from sla2_train.diffusion import FlowMatching
from sla2_train.models import ConfigError, dense_capture, sla2_processors

from .batch import latents_and_text
from .callbacks import LastCheckpoint

log = logging.getLogger(__name__)

WHEN = ("start", "end")


class AlphaCalibration:
    def __init__(self, fit=None, when: str = "start"):
        if when not in WHEN:
            raise ConfigError(f"stage.calibrate_alpha.when must be one of {list(WHEN)}, got {when!r}")
        self.fit, self.when = fit, when

    def callback(self) -> pl.Callback | None:
        return _CalibrateAtEnd(self.fit) if self.when == "end" else None


class _CalibrateAtEnd(pl.Callback):
    """Fits α once the last optimizer step is done. Lightning runs checkpoint callbacks after every other
    callback, so the final checkpoint (LastCheckpoint at the last step or at train end) holds the fitted α."""

    def __init__(self, fit):
        self.fit = fit
        self.done = False
        self._last_batch = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.max_steps is None or trainer.max_steps < 1:
            raise ConfigError("stage.calibrate_alpha.when=end needs trainer.max_steps (the step to calibrate after)")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx):
        # should_stop: Lightning's Timer (trainer.max_time) and stopping callbacks set it in this hook before
        # this callback runs (module callbacks come after the trainer's), so this step is the run's last.
        if self.done:
            return
        if trainer.global_step != trainer.max_steps and not trainer.should_stop:
            self._last_batch = batch  # a callback after this hook may still stop the run here
            return
        self._calibrate(trainer, pl_module, batch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A stop decided after the step's own hooks ran (EarlyStopping at a validation or at the epoch's end)
        # passes the check above unseen. Checkpoint callbacks run after this one, and LastCheckpoint writes
        # last.ckpt again even where it saved this very step before the fit. (Fitting here alone would do for
        # every run, but a run ending at max_steps on a save interval would then write its final checkpoint,
        # 15 GB at Wan2.1-1.3B with the optimizer, twice.)
        if self.done or self._last_batch is None:
            return
        self._calibrate(trainer, pl_module, self._last_batch)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, LastCheckpoint):
                callback.weights_changed()

    def _calibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch) -> None:
        if trainer.global_step != trainer.max_steps:
            log.warning("training stops at step %d of trainer.max_steps=%d: α is fitted on its last batch",
                        trainer.global_step, trainer.max_steps)
        # Outside training_step Lightning's precision context is off: under FSDP's bf16 parameters the dense run
        # would meet float32 activations, elsewhere it would run in float32 rather than as trained.
        # And through the strategy's wrapped module (pl_module's forward is the transformer's): under FSDP the
        # root unit's parameters (patch embedding, head, ...) are whole only inside its forward.
        with trainer.precision_plugin.forward_context():
            layers = calibrate_training_model(pl_module, batch, self.fit, forward=trainer.strategy.model)
        self.done = True
        self._last_batch = None
        log.info("calibrated α of %d layers on the last batch", layers)


def calibrate_training_model(pl_module: pl.LightningModule, batch: Mapping[str, Any], fit,
                             forward: Callable[..., Any] | None = None) -> int:
    """calibrate_alpha on a training run's model, averaged over ranks. An average of the weights (stage.ema)
    takes the fitted α as its α: export, init_from and eval read the average, and without this they would
    get the α from before the fit."""
    layers = calibrate_alpha(pl_module.model, batch, pl_module.flow,
                             lambda t: pl_module.trainer.strategy.reduce(t, reduce_op="mean"), fit=fit, forward=forward)
    ema = pl_module.stage.ema
    if ema is not None and layers:
        ema.assign(pl_module.model, (p for proc in _fitted_layers(pl_module.model)
                                     for p in proc.attention.alpha_parameters()))
    return layers


def _fitted_layers(model: nn.Module) -> list:
    return [p for p in sla2_processors(model) if p.attention.variant == "sla2"]


@torch.no_grad()
def calibrate_alpha(
    model: nn.Module,
    batch: Mapping[str, Any],
    flow: FlowMatching,
    average: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    fit=None,
    forward: Callable[..., Any] | None = None,
) -> int:
    """Calibrate every SLA2 layer's α on q, k, v captured from a dense run; returns the number of layers.

    fit: an α fit of sla2_train.attention.distill (None: the measured selected mass; LeastAbsoluteFit: the
    α that minimises the hard-mask error). forward: what runs the transformer (default `model` itself; a wrapper
    whose forward calls it, such as the strategy's module, to run inside that wrapper's forward)."""
    procs = _fitted_layers(model)
    if not procs:
        return 0
    x0, text = latents_and_text(batch)
    sigma = flow.sample_sigmas(x0.shape[0], x0.device)
    with dense_capture(model) as captured:
        (forward or model)(flow.noisy(x0, torch.randn_like(x0), sigma), flow.timesteps(sigma), text, return_dict=False)
        for proc in captured:
            if proc in procs:
                proc.attention.calibrate_alpha(*proc.captured, layout="bnhd", fit=fit)
    for proc in procs:
        for p in proc.attention.alpha_parameters():
            p.copy_(average(p.detach()))
    return len(procs)
