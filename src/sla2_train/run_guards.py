"""Refuse a training run that would go silently wrong, before it starts, with one line and the key to set.

Each of these ran for hours without a word before: a real model preset without its weights trained a random
1.3B transformer; stage 2 without a stage-1 checkpoint fine-tuned through an untrained router; the real model
on the CPU trainer formed N×N attention scores far beyond the machine's memory.
"""

from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig, OmegaConf
from torch import nn

from sla2_train.attention.reference.memory import available_bytes, dense_bytes, gigabytes
from sla2_train.models import ConfigError, sla2_processors, token_count


def check_weights(cfg: DictConfig) -> None:
    """A preset without model.path trains random weights: only when it says so (model.random_init)."""
    if cfg.model.path is None and not cfg.model.get("random_init", False):
        raise ConfigError(
            f"model.path is not set, so model={cfg.model.name} would train a randomly initialised transformer: "
            "set model.path=<local diffusers folder, e.g. Wan2.1-T2V-1.3B-Diffusers>, or model.random_init=true "
            "to start from random weights on purpose"
        )


def check_router(cfg: DictConfig) -> None:
    """A stage that freezes a learnable router needs one trained by stage 1 (init_from), unless told otherwise."""
    learnable = OmegaConf.select(cfg, "attention.variant") == "sla2"
    frozen = "router" not in cfg.stage.train
    if learnable and frozen and not cfg.init_from and not cfg.stage.get("allow_untrained_router", False):
        raise ConfigError(
            f"stage={cfg.stage.name} keeps the router frozen, and without init_from it is the untrained one: set "
            "init_from=<stage-1 checkpoint, e.g. outputs/<run>/checkpoints/last.ckpt> (run stage=distill first), "
            "or stage.allow_untrained_router=true to train with the untrained (SLA heuristic) router on purpose"
        )


def check_run_config(cfg: DictConfig) -> None:
    """The checks that need only the composed config; run before anything is built."""
    check_weights(cfg)
    check_router(cfg)


def check_attention_fits(
    model: nn.Module, device, latent_shape: Sequence[int], batch_size: int, precision: str, model_name: str
) -> None:
    """Off CUDA, SLA2 runs its dense reference: refuse a sequence whose N×N scores the machine cannot hold."""
    procs = sla2_processors(model)
    if not procs or device.type == "cuda":
        return
    n = token_count(model, latent_shape)
    heads = procs[0].attention.num_heads
    itemsize = 2 if "16" in str(precision) else 4
    need, free = dense_bytes(batch_size, heads, n, n, itemsize), available_bytes(device)
    if need > free:
        raise ConfigError(
            f"model={model_name} cannot train on {device.type}: there SLA2 runs its plain-PyTorch reference, which "
            f"forms N×N attention scores, at least {gigabytes(need)} per layer at N={n:,} tokens "
            f"(model.latent_shape {list(latent_shape)}, batch {batch_size}, {heads} heads), and {gigabytes(free)} "
            "is available; use trainer=gpu (the Triton kernels never form the N×N matrix) or a preset made for CPU "
            "(model=tiny)"
        )
