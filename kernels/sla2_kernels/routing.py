"""The block router's host side (docs/method.md, Router): pooled, projected block scores and their row-wise
Top-k. The kernels are in router_kernels.py."""

from __future__ import annotations

import math

import torch

from . import launch
from .checks import check_block, check_projections, check_qkv, check_state, check_topk
from .launch import cdiv
from .router_kernels import block_scores_kernel, pool_sums_kernel, pooled_project_kernel, topk_kernel
from .tuning import (
    ROUTER_DOT_CHUNK, ROUTER_POOL_PROGRAMS_PER_SM, ROUTER_POOL_WARPS, ROUTER_PROJECT_ROWS, ROUTER_SCORE_TILE,
    TOPK_DEFAULT_LAUNCH, TOPK_LAUNCH, TOPK_MAX_RADIX,
)


def router(q, k, proj_q, proj_k, *, block_q: int, block_k: int, topk: int, layout: str, kv_state=None):
    """Block scores fp32 [B, H, nq, nk] and the Top-k key blocks int32 [B, H, nq, topk], ascending. Four launches:
    the pooling sums (Q's, and K's unless kv_state has them), the projections, the scores, the Top-k."""
    bq, bk = check_block("block_q", block_q), check_block("block_k", block_k)
    (B, H, N, D), strides = check_qkv({"q": q, "k": k}, layout)
    check_projections(proj_q, proj_k, H, D, q.device)
    BH, nq, nk = B * H, cdiv(N, bq), cdiv(N, bk)
    check_topk(topk, nk)
    f32 = dict(device=q.device, dtype=torch.float32)
    qsum = launch.empty(BH, nq, D, **f32)
    # Runs of blocks a program: enough programs to fill the GPU, each leaving a partial sum of K for μ_K (under the
    # interpreter, one "SM": several runs a head, so the CPU tests cover the partial sums).
    per_sm = ROUTER_POOL_PROGRAMS_PER_SM * launch.num_sms(q.device)
    nsplit = max(1, min(nq, cdiv(per_sm, BH)))
    if kv_state is not None:
        check_state(kv_state, k, bk, layout, quant=False)
        ksum, kmean, nparts, pooled = kv_state.ksum, kv_state.kmean, 0, 1  # Q alone
    else:
        ksum = launch.empty(BH, nk, D, **f32)
        kmean = launch.empty(BH, nsplit, D, **f32)  # partial sums; μ_K = their sum / N
        nparts, pooled = nsplit, 2
    launch.run("pool_sums", pool_sums_kernel, (nsplit, BH, pooled), q, k, qsum, ksum, kmean,
               *strides["q"], *strides["k"], N, H, nq, nk, cdiv(nq, nsplit), cdiv(nk, nsplit), nsplit,
               BQ=bq, BK=bk, D=D, num_warps=ROUTER_POOL_WARPS)
    wq = proj_q.detach().to(torch.float32).contiguous()
    wk = proj_k.detach().to(torch.float32).contiguous()
    qp, kp = launch.empty(BH, nq, D, **f32), launch.empty(BH, nk, D, **f32)
    rb = ROUTER_PROJECT_ROWS
    launch.run("pooled_project", pooled_project_kernel, (cdiv(max(nq, nk), rb), BH, 2),
               qsum, ksum, kmean, wq, wk, qp, kp, N, H, nq, nk, nparts, 1.0 / math.sqrt(D),
               RB=rb, BQ=bq, BK=bk, D=D, DC=ROUTER_DOT_CHUNK, num_warps=4)
    scores = launch.empty(B, H, nq, nk, **f32)
    qt, kt = ROUTER_SCORE_TILE
    launch.run("block_scores", block_scores_kernel, (cdiv(nq, qt), cdiv(nk, kt), BH),
               qp, kp, scores, nq, nk, QT=qt, KT=kt, D=D, DC=ROUTER_DOT_CHUNK, num_warps=4)
    return scores, topk_indices(scores, topk)


def topk_indices(scores: torch.Tensor, topk: int) -> torch.Tensor:
    """Row-wise Top-k of [B, H, nq, nk] scores -> int32 [B, H, nq, topk], ascending.

    Radix selection (topk_kernel) up to TOPK_MAX_RADIX padded columns, torch.topk above (tuning.TOPK_LAUNCH).
    """
    nkp = launch.next_power_of_2(scores.shape[-1])
    if nkp > TOPK_MAX_RADIX:
        return scores.topk(topk, dim=-1, sorted=False).indices.sort(dim=-1).values.to(torch.int32)
    return topk_radix(scores, topk, *TOPK_LAUNCH.get(nkp, TOPK_DEFAULT_LAUNCH))


def topk_radix(scores: torch.Tensor, topk: int, rows_per_program: int, num_warps: int) -> torch.Tensor:
    """topk_kernel on any row width (the benchmark's Top-k sweep calls it directly)."""
    B, H, nq, nk = scores.shape
    rows = B * H * nq
    indices = launch.empty(B, H, nq, topk, device=scores.device, dtype=torch.int32)
    launch.run("topk", topk_kernel, (cdiv(rows, rows_per_program),), scores, indices, rows, nk, topk,
               R=rows_per_program, NKP=launch.next_power_of_2(nk), num_warps=num_warps)
    return indices
