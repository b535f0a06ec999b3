"""Attention FLOPs of one self-attention call, in the two conventions the SLA2 paper's tables mix.

dense-equivalent: 4·B·H·N²·d (QKᵀ and PV, 2 FLOPs per multiply-add), what full attention would compute;
dividing it by SLA2's time gives the "effective" throughput that SLA and SageAttention report.
actual: what SLA2 computes: the selected blocks' QKᵀ and PV, the linear branch with its key-block sums
(φ(K_j)ᵀV_j, pre-aggregated totals minus the selected blocks, φ(Q)H), and the router's pooled scores.
"""

from __future__ import annotations

import math


def dense_attention_flops(batch: int, heads: int, seq_len: int, head_dim: int) -> float:
    return 4.0 * batch * heads * seq_len * seq_len * head_dim


def sla2_attention_flops(
    batch: int, heads: int, seq_len: int, head_dim: int, block_q: int, block_k: int, selected_blocks: int
) -> dict[str, float]:
    """Actual FLOPs of hard Top-k SLA2 with `selected_blocks` key blocks per query block, by part."""
    nq, nk = math.ceil(seq_len / block_q), math.ceil(seq_len / block_k)
    bh, d = batch * heads, head_dim
    # Each query row sees k_sel whole key blocks (the ragged last block counts as full: the kernels compute it).
    sparse = 4.0 * bh * seq_len * min(selected_blocks * block_k, seq_len) * d
    key_sums = 2.0 * bh * seq_len * d * d  # h_j = φ(K_j)ᵀ V_j over all keys
    subtract = 1.0 * bh * nq * selected_blocks * d * d  # H_i = H_total − Σ_selected h_j (adds only)
    query_side = 2.0 * bh * seq_len * d * (d + 1)  # φ(Q_i) H_i and φ(Q_i)·Z_i
    linear = key_sums + subtract + query_side if selected_blocks < nk else 0.0
    router = 2.0 * bh * (nq + nk) * d * d + 2.0 * bh * nq * nk * d
    return {"sparse": sparse, "linear": linear, "router": router, "total": sparse + linear + router}
