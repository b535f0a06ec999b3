"""Everything derived from K and V alone, in one pass: the linear branch's per-key-block sums, the router's key
pooling sums and (low-bit) the quantised K̂, V̂ (docs/method.md, Linear branch; Low-bit sparse branch and QAT)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from . import launch
from .checks import check_block, check_qkv
from .layouts import NK_ALIGN
from .linear_precompute import kv_precompute_kernel, kv_totals_kernel
from .lowbit_quant import kv_stats_kernel
from .tuning import PRECOMPUTE_PROGRAMS_PER_SM, PrecomputeConfig


@dataclass
class KVState:
    """Everything derived from K and V alone (one pass): shared by the router and the forward."""

    block_k: int
    layout: str
    shape: tuple  # (B, H, N, D)
    ksum: torch.Tensor  # fp32 [BH, nk, D] column sums of each key block
    kmean: torch.Tensor  # fp32 [BH, D] per-head token mean of K (the smoothing vector)
    hblk: torch.Tensor  # bf16 [BH, nk rounded up to NK_ALIGN, D, D] h_j = φ(K_j)ᵀ V_j, then zero blocks
    zblk: torch.Tensor  # fp32 [BH, nk, D] z_j = colsum φ(K_j)
    ztot: torch.Tensor  # fp32 [BH, D] Z_tot = Σ_j z_j
    k8: torch.Tensor | None = None  # int8 [BH, nk·b_k, D] smoothed K, INT8 per key block
    sk: torch.Tensor | None = None  # fp32 [BH, nk]
    v8t: torch.Tensor | None = None  # float8_e4m3fn [BH, D, nk·b_k] V / s_v, transposed
    sv: torch.Tensor | None = None  # fp32 [BH, D] per-channel V scale

    @property
    def quant(self) -> bool:
        return self.k8 is not None


def precompute(k: torch.Tensor, v: torch.Tensor, *, block_k: int, layout: str, quant: bool = False,
               config: PrecomputeConfig | None = None) -> KVState:
    """h_j, z_j, Z_tot and the key-block sums in one pass over K, V; with quant also K̂, V̂."""
    bk = check_block("block_k", block_k)
    shape, strides = check_qkv({"k": k, "v": v}, layout)
    return build_state(k, v, shape, strides["k"], strides["v"], bk, layout, quant, config)


def build_state(k, v, shape, k_strides, v_strides, block_k: int, layout: str, quant: bool,
                config: PrecomputeConfig | None = None, soft_e4m3: bool | None = None) -> KVState:
    """precompute on inputs already validated (shape (B, H, N, D) and element strides in that order, from
    checks.check_qkv): two launches in bf16 (the pass, the per-head totals), three with quant (the reduction that
    μ_K and s_v need first, then the pass, then the totals). soft_e4m3: round to e4m3 in software as under the
    interpreter (default there) instead of by the hardware conversion; the GPU tests compare the two."""
    B, H, N, D = shape
    BH, nk = B * H, triton.cdiv(N, block_k)
    nk_pad = triton.cdiv(nk, NK_ALIGN) * NK_ALIGN
    dev = k.device
    cfg = config or PrecomputeConfig()
    interpret = launch.interpreting()
    # Enough programs to fill the GPU, each over a contiguous run of key blocks; together they cover h's padding.
    nsplit = 1 if interpret else max(1, min(nk_pad, triton.cdiv(PRECOMPUTE_PROGRAMS_PER_SM * launch.num_sms(dev), BH)))
    per_split = cfg.blocks_per_program or triton.cdiv(nk_pad, nsplit)
    nsplit = triton.cdiv(nk_pad, per_split)
    f32 = dict(device=dev, dtype=torch.float32)
    hblk = launch.empty(BH, nk_pad, D, D, device=dev, dtype=torch.bfloat16)
    zblk = launch.empty(BH, nk, D, **f32)
    ksum = launch.empty(BH, nk, D, **f32)
    zpart = launch.empty(2, BH, nsplit, D, **f32)  # partial Σ z_j and Σ colsum K_j per program
    totals = launch.empty(2, BH, D, **f32)  # Z_tot, μ_K
    state = KVState(block_k, layout, shape, ksum, totals[1], hblk, zblk, totals[0])
    quantised = ()
    if quant:
        stats = launch.empty(2, BH, nsplit, D, **f32)  # partial Σ K and max|V| per program
        launch.run("kv_stats", kv_stats_kernel, (nsplit, BH), k, v, stats, *k_strides, *v_strides,
                   N, H, per_split, nsplit, BK=block_k, D=D, num_warps=cfg.num_warps)
        state.k8 = launch.empty(BH, nk * block_k, D, device=dev, dtype=torch.int8)
        state.sk = launch.empty(BH, nk, **f32)
        state.v8t = launch.empty(BH, D, nk * block_k, device=dev, dtype=torch.float8_e4m3fn)
        state.sv = launch.empty(BH, D, **f32)
        quantised = (stats, state.kmean, state.k8, state.sk, state.v8t, state.sv)
    # No TMA variant: with descriptor loads and stores, Triton 3.6's software pipeliner failed on this kernel at
    # the Wan shapes (H100, 2026-11-27), though it compiled at N = 4096.
    launch.run(
        "kv_precompute", kv_precompute_kernel, (nsplit, BH),
        k, v, hblk, zblk, ksum, zpart, *(quantised or (zpart,) * 6),  # unread placeholders without quant
        *k_strides, *v_strides,
        N, H, nk, nk_pad, per_split, nsplit,
        BK=block_k, D=D, QUANT=quant, INTERPRET=interpret, SOFT_E4M3=interpret if soft_e4m3 is None else soft_e4m3,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    launch.run("kv_totals", kv_totals_kernel, (BH,), zpart, state.ztot, state.kmean, N, nsplit, D=D,
               WRITE_MEAN=not quant, num_warps=1)
    return state
