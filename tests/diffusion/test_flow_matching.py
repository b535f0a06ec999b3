"""Our flow-matching noising agrees with diffusers' FlowMatchEulerDiscreteScheduler (Wan's sampler)."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from sla2_train.diffusion import FlowMatching


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_shift_matches_the_scheduler_sigmas(shift):
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    unshifted = torch.linspace(1, 1000, 1000).flip(0) / 1000
    flow = FlowMatching(shift=shift)
    torch.testing.assert_close(flow.shifted(unshifted), sched.sigmas)
    torch.testing.assert_close(flow.timesteps(flow.shifted(unshifted)), sched.timesteps)


def test_noising_matches_scale_noise():
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(20)
    x0, noise = torch.randn(1, 4, 3, 6, 8), torch.randn(1, 4, 3, 6, 8)
    for i in (0, 7, 19):
        t = sched.timesteps[i : i + 1]
        expected = sched.scale_noise(x0, t, noise)
        ours = FlowMatching(shift=3.0).noisy(x0, noise, sched.sigmas[i : i + 1])
        torch.testing.assert_close(ours, expected)


def test_velocity_target_is_what_the_euler_sampler_integrates():
    """If the model predicted our target exactly, the scheduler would walk from pure noise to x0."""
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(7)
    x0, noise = torch.randn(2, 4, 3, 6, 8), torch.randn(2, 4, 3, 6, 8)
    x = noise
    for t in sched.timesteps:
        x = sched.step(FlowMatching.target(x0, noise), t, x, return_dict=False)[0]
    torch.testing.assert_close(x, x0, rtol=1e-4, atol=1e-5)


def test_sampled_sigmas_are_shifted_towards_noise():
    torch.manual_seed(0)
    plain, shifted = FlowMatching(shift=1.0).sample_sigmas(20000), FlowMatching(shift=3.0).sample_sigmas(20000)
    assert 0 < shifted.min() and shifted.max() < 1
    assert abs(plain.mean() - 0.5) < 0.02 and shifted.mean() > plain.mean() + 0.15


def test_bad_flow_options_are_named():
    with pytest.raises(ValueError, match="flow.shift"):
        FlowMatching(shift=0)
    with pytest.raises(ValueError, match="flow.sampling"):
        FlowMatching(sampling="cosine")
