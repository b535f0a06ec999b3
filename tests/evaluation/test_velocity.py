"""The velocity replay: per-step errors of each guidance branch, their difference and the guided velocity, from
recorded transformer calls run again through another model."""

import pytest
import torch
from torch import nn

from sla2_train.evaluation.velocity import VelocityRecorder, mean_per_step, step_errors, video_metrics


def _l1(a, b):
    return float((a - b).abs().sum() / b.abs().sum())


def test_the_same_error_in_both_branches_cancels_in_their_difference():
    g = torch.Generator().manual_seed(0)
    dc, du, d = (torch.randn(2, 3, 5, generator=g) for _ in range(3))
    e = step_errors([dc, du], [dc + d, du + d], guidance_scale=5.0)
    assert e["cond"] == pytest.approx(_l1(dc + d, dc)) and e["uncond"] == pytest.approx(_l1(du + d, du))
    assert e["guidance"] < 1e-6  # guidance multiplies the difference only
    guided = du + 5.0 * (dc - du)
    assert e["guided"] == pytest.approx(float(d.abs().sum() / guided.abs().sum()), rel=1e-5)


def test_opposite_errors_are_multiplied_by_guidance():
    g = torch.Generator().manual_seed(1)
    dc, du, d = (torch.randn(4, 6, generator=g) for _ in range(3))
    scale = 5.0
    e = step_errors([dc, du], [dc + d, du - d], guidance_scale=scale)
    assert e["guidance"] == pytest.approx(2 * float(d.abs().sum() / (dc - du).abs().sum()), rel=1e-5)
    guided = du + scale * (dc - du)  # SLA2's guided velocity is guided + (2·scale − 1)·d
    assert e["guided"] == pytest.approx((2 * scale - 1) * float(d.abs().sum() / guided.abs().sum()), rel=1e-5)


def test_without_guidance_one_call_is_cond_and_guided():
    a, b = torch.ones(3), torch.full((3,), 1.5)
    assert step_errors([a], [b], guidance_scale=1.0) == {"cond": 0.5, "guided": 0.5}
    with pytest.raises(ValueError, match="one call, or two"):
        step_errors([a, a], [b], guidance_scale=5.0)


class _Toy(nn.Module):
    """velocity = scale · x · t + text.sum(); `scale` plays the attention setting (dense 1, SLA2 other)."""

    def __init__(self):
        super().__init__()
        self.scale = 1.0

    def forward(self, hidden_states, timestep, encoder_hidden_states=None, return_dict=False):
        return (self.scale * hidden_states * timestep + encoder_hidden_states.sum(),)


def test_recorded_calls_replay_on_the_recorded_inputs():
    model = _Toy()
    scale, steps = 5.0, 3
    rec = VelocityRecorder(per_step=2, guidance_scale=scale)
    handle = model.register_forward_hook(rec, with_kwargs=True)
    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(4, generator=g), torch.randn(4, generator=g)
    x = torch.randn(2, 4, generator=g)
    inputs = []
    rec.start()
    for step in range(steps):
        t = torch.tensor(float(step + 1))
        for text in (cond, uncond):  # the same embedding object every step, as WanPipeline hands it
            inputs.append((x.clone(), t, text))
            model(x, t, encoder_hidden_states=text)
        x.mul_(0.5)  # the sampler updates its latents in place: the recording must not follow
    handle.remove()
    assert len(rec.calls) == 2 * steps
    assert rec.calls[0].kwargs["encoder_hidden_states"] is rec.calls[2].kwargs["encoder_hidden_states"]  # one copy

    model.scale = 1.25
    per_step = rec.replay(model)
    assert set(per_step) == {"cond", "uncond", "guidance", "guided"} and len(per_step["guided"]) == steps
    for step in range(steps):
        (xc, t, tc), (xu, _, tu) = inputs[2 * step], inputs[2 * step + 1]
        dense = [xc * t + tc.sum(), xu * t + tu.sum()]
        sla2 = [1.25 * xc * t + tc.sum(), 1.25 * xu * t + tu.sum()]
        expected = step_errors(dense, sla2, scale)
        for key, value in expected.items():
            assert per_step[key][step] == pytest.approx(value, rel=1e-6)
    metrics = video_metrics(per_step)
    assert metrics["velocity_rel_l1"] == pytest.approx(sum(per_step["guided"]) / steps)
    assert metrics["guidance_rel_l1"] == pytest.approx(sum(per_step["guidance"]) / steps)


def test_an_embedding_changed_in_place_is_copied_again():
    model = _Toy()
    rec = VelocityRecorder(per_step=1, guidance_scale=1.0)
    model.register_forward_hook(rec, with_kwargs=True)
    text, x = torch.ones(3), torch.ones(2)
    rec.start()
    model(x, torch.tensor(1.0), encoder_hidden_states=text)
    text.add_(1.0)
    model(x, torch.tensor(1.0), encoder_hidden_states=text)
    first, second = (c.kwargs["encoder_hidden_states"] for c in rec.calls)
    assert first is not second and float(first.sum()) == 3.0 and float(second.sum()) == 6.0
    assert rec.replay(model)["guided"] == [0.0, 0.0]


def test_partial_steps_are_refused_and_videos_average_per_step():
    rec = VelocityRecorder(per_step=2, guidance_scale=5.0)
    model = _Toy()
    model.register_forward_hook(rec, with_kwargs=True)
    rec.start()
    model(torch.ones(2), torch.tensor(1.0), encoder_hidden_states=torch.ones(1))
    with pytest.raises(RuntimeError, match="not whole steps of 2"):
        rec.replay(model)
    assert mean_per_step([{"cond": [1.0, 3.0]}, {"cond": [3.0, 5.0]}]) == {"cond": [2.0, 4.0]}
