"""Per-row means of the per-video records, and attention FLOPs per video in both conventions."""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from sla2_train.attention.reference import num_blocks, topk_count
from sla2_train.metrics import dense_attention_flops, sla2_attention_flops
from sla2_train.models import sla2_processors, token_count

from .paired import mean_and_sem


def summarise_rows(videos: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per row name, in first-seen order: mean seconds, transformer ms per forward and metrics, and each
    metric's standard error over the row's videos."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for v in videos:
        rows.setdefault(v["row"], []).append(v)
    out = []
    for name, vs in rows.items():
        names = list(vs[0]["metrics"])
        out.append({
            "name": name,
            "videos": len(vs),
            "seconds_per_video": sum(v["seconds"] for v in vs) / len(vs),
            "forward_ms": sum(v["forward_ms"] for v in vs) / len(vs),
            "metrics": {k: sum(v["metrics"][k] for v in vs) / len(vs) for k in names},
            "metrics_sem": {k: mean_and_sem([v["metrics"][k] for v in vs])[1] for k in names},
        })
    return out


def attention_flops(model: nn.Module, latent_shape: Sequence[int], forwards: int) -> dict[str, Any]:
    """Self-attention FLOPs of one video (`forwards` transformer calls × every layer), dense and SLA2 actual."""
    n = token_count(model, latent_shape)
    layers = len(model.blocks)
    heads = model.config.num_attention_heads
    head_dim = model.config.attention_head_dim
    per_video = forwards * layers
    out: dict[str, Any] = {"dense": per_video * dense_attention_flops(1, heads, n, head_dim)}
    procs = sla2_processors(model)
    if procs:
        a = procs[0].attention
        parts = sla2_attention_flops(1, heads, n, head_dim, a.block_q, a.block_k,
                                     topk_count(num_blocks(n, a.block_k), a.sparsity))
        out["sla2"] = per_video * parts["total"]
        out["sla2_parts"] = {k: per_video * v for k, v in parts.items()}
    return out
