"""Wan2.1 (diffusers) with SLA2 self-attention: building, loading, swapping, capturing."""

from .attention_swap import (
    KeepDense,
    SLA2Swap,
    describe_attention,
    set_attention_mode,
    sla2_processors,
    with_attention,
)
from .capture import capture_qkv, dense_attention, dense_capture
from .errors import ConfigError
from .sla2_processor import SLA2WanProcessor
from .wan_factory import resolve_model_folder, token_count, wan_transformer

__all__ = [
    "ConfigError",
    "KeepDense",
    "SLA2Swap",
    "SLA2WanProcessor",
    "dense_attention",
    "describe_attention",
    "capture_qkv",
    "dense_capture",
    "resolve_model_folder",
    "set_attention_mode",
    "sla2_processors",
    "token_count",
    "wan_transformer",
    "with_attention",
]
