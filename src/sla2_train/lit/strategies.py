"""FSDP wrapping for Wan: one FSDP unit per transformer block (its SLA2 processor shards with it)."""

from __future__ import annotations

from diffusers.models.transformers.transformer_wan import WanTransformerBlock


def wan_block_policy() -> set[type]:
    return {WanTransformerBlock}
