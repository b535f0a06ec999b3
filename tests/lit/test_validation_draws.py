"""Validation draws the same noise levels, noise and sampled rows for a batch at every pass, and leaves the
training stream's random state where it was: a validation curve then moves only with what training changed."""

import pytest
import torch


def validate(module, batch, batch_idx):
    """The values validation_step logs for one batch, as floats."""
    logged = {}
    module.log = lambda name, value, **_: logged.__setitem__(name, float(value))
    module.log_dict = lambda values, **_: logged.update({k: float(v) for k, v in values.items()})
    with torch.no_grad():  # as Lightning's validation loop runs it
        module.validation_step(batch, batch_idx)
    return logged


@pytest.mark.parametrize("stage", ["distill", "qat"])
def test_each_pass_draws_the_same(build_module, make_batch, stage):
    extra = ["++stage.allow_untrained_router=true"] if stage == "qat" else []
    module, cfg = build_module(f"stage={stage}", *extra)
    module.eval()
    batch = make_batch(cfg, batch=2)
    first = validate(module, batch, 0)
    assert "val/loss" in first
    if stage == "distill":
        assert "val/router/sparse_l1" in first  # the monitor's metrics are drawn under the same seed
    torch.rand(3)  # training consumes the global stream between two validations
    assert validate(module, batch, 0) == first
    # the seed follows the batch's place in the loader: another batch position draws other noise levels
    assert validate(module, batch, 1)["val/loss"] != first["val/loss"]


def test_validation_leaves_the_training_stream(build_module, make_batch):
    module, cfg = build_module("stage=distill")
    batch = make_batch(cfg, batch=2)
    state = torch.get_rng_state()
    validate(module, batch, 0)
    assert torch.equal(torch.get_rng_state(), state)
