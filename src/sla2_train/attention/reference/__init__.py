"""Pure-PyTorch SLA2: the oracle that every kernel and every test is checked against (docs/method.md).

Tensors are [B, H, N, D]; any float dtype (tests use float64). Masks are dense per block. indexed.py and
backward.py take the router's index lists and either layout: the custom ops' implementation on CPU.
"""

from .backward import reference_backward
from .blocks import (block_token_counts, expand_block_mask, expand_query_blocks, mean_pool, num_blocks,
                     pooled_block_mass, query_chunks, smooth_k)
from .branches import (
    full_attention,
    scaled_scores,
    linear_attention_complement,
    linear_block_sums,
    phi,
    soft_linear_attention,
    soft_sparse_attention,
    sparse_attention,
    weighted_linear_attention,
)
from .combine import (
    alpha_mix,
    effective_alpha,
    sla2_attention,
    sla2_attention_soft,
    sla2_sparse_branch,
    sla_attention,
    sla_mix,
)
from .indexed import indexed_forward, indexed_router
from .memory import DenseTooLarge, check_dense_fits
from .quant import (
    FP8_E4M3_MAX,
    INT8_MAX,
    fake_quant_sparse_attention,
    quantised_scores,
    quantize_fp8_channels,
    quantize_int8_blocks,
    quantised_kv,
    round_to_fp8_e4m3,
    running_block_max,
    straight_through,
)
from .router import BlockSelection, bestmass_selection, hard_topk, router_scores, selected_mass, topk_count
from .soft_topk import soft_topk, soft_topk_logits, solve_lambda

__all__ = [name for name in dir() if not name.startswith("_")]
