"""Data-parallel ranks draw their own σ and ε: seed_everything alone gives every rank the same stream."""

from types import SimpleNamespace

import torch


def first_draws(module, rank, world_size, step=0):
    module._trainer = SimpleNamespace(global_rank=rank, world_size=world_size, global_step=step)
    torch.manual_seed(0)  # what seed_everything(cfg.seed) leaves on every rank
    module.on_train_start()
    return module.flow.sample_sigmas(4), torch.randn(3)


def test_ranks_draw_different_noise_and_each_rank_is_reproducible(build_module):
    module, _ = build_module("stage=qat")
    module._seed = 0
    rank0 = first_draws(module, rank=0, world_size=2)
    rank1 = first_draws(module, rank=1, world_size=2)
    assert not torch.equal(rank0[0], rank1[0]) and not torch.equal(rank0[1], rank1[1])
    again = first_draws(module, rank=1, world_size=2)
    assert torch.equal(rank1[0], again[0]) and torch.equal(rank1[1], again[1])


def test_a_resumed_run_does_not_replay_the_first_steps_noise(build_module):
    module, _ = build_module("stage=qat")
    module._seed = 0
    fresh = first_draws(module, rank=0, world_size=1)
    torch.manual_seed(0)
    assert torch.equal(fresh[0], module.flow.sample_sigmas(4))  # one process, fresh: stream untouched
    resumed = first_draws(module, rank=0, world_size=1, step=2)
    assert not torch.equal(fresh[0], resumed[0])
