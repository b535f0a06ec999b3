"""α starts from the measured selected softmax mass when the stage asks for it (docs/method.md, "α")."""

import torch

from sla2_train.lit.alpha_calibration import calibrate_alpha
from sla2_train.models import dense_capture, sla2_processors


def test_calibrated_alpha_is_the_measured_mass_per_head(build_module, make_batch):
    module, cfg = build_module("stage=distill", "stage.calibrate_alpha=true", "attention.sparsity=0.75")
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
    fresh, _ = build_module("stage=distill", "stage.calibrate_alpha=true")
    assert fresh._needs_calibration
    ckpt = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": fresh.state_dict()}, ckpt)
    started, _ = build_module("stage=distill", "stage.calibrate_alpha=true", f"init_from={ckpt}")
    assert not started._needs_calibration
    off, _ = build_module("stage=distill")
    assert not off._needs_calibration
