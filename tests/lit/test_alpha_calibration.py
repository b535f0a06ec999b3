"""α in closed form at the start or the end of stage 1 (docs/method.md, "α"; conf/stage/distill.yaml)."""

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from sla2_train.attention.distill import LeastAbsoluteFit
from sla2_train.lit.alpha_calibration import AlphaCalibration, calibrate_alpha
from sla2_train.lit.callbacks import LastCheckpoint
from sla2_train.models import ConfigError, dense_capture, sla2_processors


def test_calibrated_alpha_is_the_measured_mass_per_head(build_module, make_batch):
    module, cfg = build_module("stage=distill", "stage.calibrate_alpha.when=start", "attention.sparsity=0.75")
    batch = make_batch(cfg)
    procs = sla2_processors(module.model)
    before = [torch.sigmoid(p.attention.alpha.logit).clone() for p in procs]

    torch.manual_seed(99)
    assert calibrate_alpha(module.model, batch, module.flow) == len(procs)

    torch.manual_seed(99)  # the same σ and ε: the same captured q, k, v
    x0, text = batch["latents"], batch["text_embeds"] * batch["text_mask"][..., None]
    sigma = module.flow.sample_sigmas(x0.shape[0])
    with torch.no_grad(), dense_capture(module.model) as captured:
        module.model(module.flow.noisy(x0, torch.randn_like(x0), sigma), module.flow.timesteps(sigma), text)
        measured = [p.attention.measure_mass(*p.captured, layout="bnhd")[0].mean(dim=-1) for p in captured]
    for proc, mass, old in zip(procs, measured, before):
        alpha = torch.sigmoid(proc.attention.alpha.logit)
        torch.testing.assert_close(alpha, mass.float(), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(alpha, old)
        assert ((0 < alpha) & (alpha < 1)).all()


def test_calibration_is_skipped_when_weights_come_from_a_checkpoint(build_module, tmp_path):
    fresh, _ = build_module("stage=distill", "stage.calibrate_alpha.when=start")
    assert fresh._needs_calibration
    ckpt = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": fresh.state_dict()}, ckpt)
    started, _ = build_module("stage=distill", "stage.calibrate_alpha.when=start", f"init_from={ckpt}")
    assert not started._needs_calibration
    off, _ = build_module("stage=distill", "stage.calibrate_alpha=null")
    assert not off._needs_calibration
    at_end, _ = build_module("stage=distill")  # the default fits after training, not on the first batch
    assert not at_end._needs_calibration


class _Spy:
    """Wraps an α fit: records the step and the router each layer was fitted with, and the α it returned."""

    def __init__(self, fit, module):
        self.fit, self.module, self.calls = fit, module, []

    def __call__(self, attention, q, k, v):
        target, estimated = self.fit(attention, q, k, v)
        self.calls.append((self.module.global_step, attention.router.proj_q.detach().clone(), target.clone()))
        return target, estimated


def test_alpha_is_fitted_after_the_last_step_and_checkpointed(build_module, make_batch, tmp_path):
    module, cfg = build_module("stage=distill", "attention.sparsity=0.75", "stage.monitor=null")
    calibration = module.stage.calibrate_alpha  # the shipped default: least absolute error, after training
    assert calibration.when == "end" and isinstance(calibration.fit, LeastAbsoluteFit)
    spy = calibration.fit = _Spy(calibration.fit, module)
    procs = sla2_processors(module.model)
    eye = procs[0].attention.router.proj_q.detach().clone()
    steps = 2
    # A step-interval save at the last step is the case that needs the order: it must see the fitted α.
    ckpt = LastCheckpoint(dirpath=tmp_path, filename="s{step}", save_top_k=0, save_last=True,
                          every_n_train_steps=steps, enable_version_counter=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, max_steps=steps, limit_val_batches=0, callbacks=[ckpt])
    trainer.fit(module, DataLoader([make_batch(cfg) for _ in range(steps)], batch_size=None))

    assert [step for step, _, _ in spy.calls] == [steps] * len(procs)  # once per layer, after the last step
    assert not torch.allclose(spy.calls[0][1], eye)  # with the trained router's mask
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == steps
    _assert_fitted_and_saved(procs, spy.calls, saved)


def test_the_weights_average_takes_the_fitted_alpha(build_module, make_batch, tmp_path):
    """With stage.ema the checkpoint's average is what export, init_from and eval read: it must hold the α
    fitted after the last step, not the average of the α from before the fit."""
    ema = "++stage.ema={_target_:sla2_train.lit.ema.WeightEMA,decay:0.6}"
    module, cfg = build_module("stage=distill", "attention.sparsity=0.75", "stage.monitor=null", ema)
    spy = module.stage.calibrate_alpha.fit = _Spy(module.stage.calibrate_alpha.fit, module)
    procs = sla2_processors(module.model)
    ckpt = LastCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True, enable_version_counter=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, max_steps=2, limit_val_batches=0, callbacks=[ckpt])
    trainer.fit(module, DataLoader([make_batch(cfg) for _ in range(2)], batch_size=None))

    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    averaged = saved["ema"]["state_dict"]
    alpha_keys = [k for k in averaged if k.endswith("alpha.logit")]
    assert len(alpha_keys) == len(procs)
    for key in alpha_keys:
        torch.testing.assert_close(averaged[key], saved["state_dict"][key])
    # the rest of the average is still an average: the last step's update moved it only part of the way
    other = next(k for k in averaged if "proj_q" in k)
    assert not torch.equal(averaged[other], saved["state_dict"][other])
    _assert_fitted_and_saved(procs, spy.calls, saved)


def _assert_fitted_and_saved(procs, calls, saved):
    """Every layer's α is the fit's target, and the checkpoint holds it."""
    for i, (proc, (_, _, target)) in enumerate(zip(procs, calls)):
        alpha = torch.sigmoid(proc.attention.alpha.logit.detach())
        torch.testing.assert_close(alpha, target[:, 0].clamp(1e-4, 1 - 1e-4), rtol=1e-3, atol=1e-4)
        key = next(k for k in saved["state_dict"] if f".{i}.attn1" in k and k.endswith("alpha.logit"))
        torch.testing.assert_close(saved["state_dict"][key], proc.attention.alpha.logit.detach())


class _StopAt(pl.Callback):
    """Stops the run after a step, as trainer.max_time's Timer does (a trainer callback, so it runs first)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_a_run_stopped_before_max_steps_is_fitted_after_its_last_step(build_module, make_batch, tmp_path):
    module, cfg = build_module("stage=distill", "attention.sparsity=0.75", "stage.monitor=null")
    spy = module.stage.calibrate_alpha.fit = _Spy(module.stage.calibrate_alpha.fit, module)
    procs = sla2_processors(module.model)
    ckpt = LastCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True, enable_version_counter=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, max_steps=10, limit_val_batches=0, callbacks=[_StopAt(2), ckpt])
    trainer.fit(module, DataLoader([make_batch(cfg) for _ in range(10)], batch_size=None))

    assert trainer.global_step == 2
    assert [step for step, _, _ in spy.calls] == [2] * len(procs)
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    _assert_fitted_and_saved(procs, spy.calls, saved)


class _StopAfterStep(pl.Callback):
    """Stops the run after the step's own hooks, at a validation or at the epoch's end, as EarlyStopping does
    when its metric stops improving."""

    def __init__(self, step, hook):
        self.step = step
        setattr(self, hook, self._stop)

    def _stop(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.parametrize("hook", ["on_validation_end", "on_train_epoch_end"])
def test_a_run_stopped_after_its_step_is_fitted_and_saved_again(build_module, make_batch, tmp_path, hook):
    """EarlyStopping ends a run after the step's own hooks ran and, here, after a step-interval save of that
    very step: α is still fitted on the last training batch, and last.ckpt written again with it."""
    module, cfg = build_module("stage=distill", "attention.sparsity=0.75", "stage.monitor=null")
    spy = module.stage.calibrate_alpha.fit = _Spy(module.stage.calibrate_alpha.fit, module)
    procs = sla2_processors(module.model)
    ckpt = LastCheckpoint(dirpath=tmp_path, filename="s{step}", save_top_k=0, save_last=True,
                          every_n_train_steps=2, enable_version_counter=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, max_steps=10, val_check_interval=2, limit_val_batches=1,
                         check_val_every_n_epoch=None, num_sanity_val_steps=0,
                         callbacks=[_StopAfterStep(2, hook), ckpt])
    epoch = DataLoader([make_batch(cfg) for _ in range(2)], batch_size=None)  # an epoch ends at step 2 too
    trainer.fit(module, epoch, DataLoader([make_batch(cfg)], batch_size=None))

    assert trainer.global_step == 2
    assert [step for step, _, _ in spy.calls] == [2] * len(procs)
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    _assert_fitted_and_saved(procs, spy.calls, saved)


def test_bad_calibration_options_are_one_line(build_module):
    with pytest.raises(ConfigError, match="stage.calibrate_alpha.when must be one of"):
        AlphaCalibration(when="middle")
    module, cfg = build_module("stage=distill")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, max_epochs=1, max_steps=-1,
                         enable_checkpointing=False)
    with pytest.raises(ConfigError, match="needs trainer.max_steps"):
        module.configure_callbacks()[0].on_train_start(trainer, module)


def test_calibration_after_the_last_step_runs_in_the_trainers_precision(build_module, make_batch, monkeypatch):
    """After the last step Lightning's autocast is off; the fit must run as training did (bf16 under FSDP's
    bf16 parameters, where float32 activations would not even multiply)."""
    import sla2_train.lit.alpha_calibration as calibration_module

    module, cfg = build_module("stage=distill", "attention.sparsity=0.75", "stage.monitor=null")
    seen = []
    monkeypatch.setattr(calibration_module, "calibrate_alpha",
                        lambda *a, **k: seen.append(torch.is_autocast_enabled("cpu")) or 0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, max_steps=1, limit_val_batches=0, precision="bf16-mixed",
                         enable_checkpointing=False)
    trainer.fit(module, DataLoader([make_batch(cfg)], batch_size=None))
    assert seen == [True]


def test_the_former_boolean_switch_is_one_line(build_module):
    with pytest.raises(Exception, match="no longer a switch"):
        build_module("stage=distill", "stage.calibrate_alpha=true")
