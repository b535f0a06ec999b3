"""Choosing Wan's self-attention: the `attention` config group instantiates one of these.

Only `blocks[i].attn1` is touched: diffusers' `set_attn_processor` would also replace the cross-attention.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from sla2_train.attention import SLA2Attention
from sla2_train.attention.checks import BACKENDS, TOPK_MODES, check_choice, check_options

from .errors import ConfigError
from .sla2_processor import SLA2WanProcessor
from .wan_factory import token_count


class KeepDense:
    """attention=full: the transformer keeps diffusers' own processors."""

    def __init__(self, name: str = "full"):
        self.name = name

    def apply(self, model: nn.Module, latent_shape: Sequence[int]) -> nn.Module:
        token_count(model, latent_shape)  # same shape check as the SLA2 path, so both fail alike
        return model


class SLA2Swap:
    """attention=sla2|sla: one SLA2Attention per self-attention layer, with the options of SLA2Attention."""

    config_options_of = SLA2Attention  # the config's option types are checked against its signature

    def __init__(self, name: str = "sla2", **options: Any):
        self.name = name
        self.options = dict(options)
        if "num_heads" in options or "head_dim" in options or "seq_len" in options:
            raise ConfigError("attention: num_heads, head_dim and seq_len come from the model; remove them")

    def apply(self, model: nn.Module, latent_shape: Sequence[int]) -> nn.Module:
        return self.install(model, token_count(model, latent_shape))

    def install(self, model: nn.Module, seq_len: int | None) -> nn.Module:
        """Set a fresh SLA2 processor on every `blocks[i].attn1`; `seq_len` sizes α in alpha_mode=per_block
        (None: the length-free modes)."""
        for block in model.blocks:
            attn = block.attn1
            try:
                sla2 = SLA2Attention(
                    num_heads=attn.heads, head_dim=attn.inner_dim // attn.heads, seq_len=seq_len, **self.options
                )
            except (TypeError, ValueError) as err:
                raise ConfigError(f"attention: {err}") from err
            attn.set_processor(SLA2WanProcessor(sla2))
        if self.options.get("selection") == "base":
            from .base_selection import BaseSelection  # it builds on this module's sla2_processors

            BaseSelection(model)
        return model


def with_attention(transformer: nn.Module, attention: KeepDense | SLA2Swap, latent_shape: Sequence[int]) -> nn.Module:
    """The transformer with `attention` installed; the config's `module.model` node builds this."""
    return attention.apply(transformer, latent_shape)


def sla2_processors(model: nn.Module) -> list[SLA2WanProcessor]:
    """The SLA2 processors in block order (empty for a dense model)."""
    procs = [getattr(block.attn1, "processor", None) for block in model.blocks]
    return [p for p in procs if isinstance(p, SLA2WanProcessor)]


# The options a stage may switch after construction; the others (variant, blocks, α) shape the parameters.
MUTABLE_OPTIONS = ("topk", "quant", "sparsity", "tau", "detach_lambda", "backend")


def set_attention_mode(model: nn.Module, **attrs: Any) -> None:
    """Set SLA2Attention's mutable options (topk, quant, sparsity, ...) on every layer, validated as the
    constructor validates them: a mistyped `topk: sfot` would otherwise run hard Top-k, and stage 1 would
    silently train α alone (hard Top-k gives the router no gradient)."""
    for key in attrs:
        if key not in MUTABLE_OPTIONS:
            raise ConfigError(
                f"stage.attention_mode: SLA2Attention has no option {key!r} that a stage can set; "
                f"known: {list(MUTABLE_OPTIONS)}"
            )
    for proc in sla2_processors(model):
        a = proc.attention
        for key, value in attrs.items():
            setattr(a, key, value)
        try:
            check_choice("topk", a.topk, TOPK_MODES)
            check_choice("backend", a.backend, BACKENDS)
            check_options(a.num_heads, a.head_dim, a.sparsity, a.block_q, a.block_k, a.tau)
        except ValueError as err:
            raise ConfigError(f"stage.attention_mode: {err}") from err


def describe_attention(model: nn.Module) -> dict[str, Any]:
    """How the self-attention is built, for checkpoints: {"variant": "full"} for a dense model."""
    procs = sla2_processors(model)
    if not procs:
        return {"variant": "full"}
    a = procs[0].attention
    alpha = getattr(a, "alpha", None)
    return {
        "variant": a.variant,
        "sparsity": a.sparsity,
        "block_q": a.block_q,
        "block_k": a.block_k,
        "alpha_mode": getattr(alpha, "mode", None),
        "tau": a.tau,
        "topk": a.topk,
        "quant": a.quant,
        "selection": a.selection,
        "num_layers": len(procs),
    }
