"""Everything derived from K and V alone: the linear branch's per-key-block sums and the router's key pooling sums
in one pass, and (low-bit) the quantised K̂, V̂ (docs/method.md, Linear branch; Low-bit sparse branch and QAT).

K̂ and V̂ need μ_K and the per-channel max|V| over all of a head's tokens before any element can be rounded, so
they take a second pass over K and V after the first pass's totals. One pass that also rounds was built with a
quantiser that needs no head-wide statistic (K centred by a sampled mean, V scaled per key block) and measured
twice as slow as the two passes (0.74 against 0.36 ms at Wan-1.3B, H100): beside h_j's [D, D] fp32 accumulator
the rounding spills at 4 warps and leaves one program an SM at 8 (docs/results.md, "Levers tried").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import launch, layouts
from .checks import check_block, check_qkv
from .launch import cdiv
from .layouts import NK_ALIGN, descriptor
from .linear_precompute import kv_precompute_kernel, kv_totals_kernel
from .lowbit_quant import quantize_kv_kernel
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


def key_block_runs(nk_pad: int, bh: int, sms: int, blocks_per_program: int | None = None) -> tuple[int, int]:
    """(key blocks a program, programs a head) of the pass over K, V: enough programs to give each of `sms` SMs
    PRECOMPUTE_PROGRAMS_PER_SM (one a head with sms = 0, as under the interpreter), each over a contiguous run of
    key blocks; together they cover h's padding."""
    nsplit = max(1, min(nk_pad, cdiv(PRECOMPUTE_PROGRAMS_PER_SM * sms, bh)))
    per_split = blocks_per_program or cdiv(nk_pad, nsplit)
    return per_split, cdiv(nk_pad, per_split)


def precompute(k: torch.Tensor, v: torch.Tensor, *, block_k: int, layout: str, quant: bool = False,
               config: PrecomputeConfig | None = None) -> KVState:
    """h_j, z_j, Z_tot and the key-block sums in one pass over K, V; with quant also K̂, V̂."""
    bk = check_block("block_k", block_k)
    shape, strides = check_qkv({"k": k, "v": v}, layout)
    return build_state(k, v, shape, strides["k"], strides["v"], bk, layout, quant, config)


def build_state(k, v, shape, k_strides, v_strides, block_k: int, layout: str, quant: bool,
                config: PrecomputeConfig | None = None) -> KVState:
    """precompute on inputs already validated (shape (B, H, N, D) and element strides in that order, from
    checks.check_qkv): two launches in bf16 (the pass over K, V, then the per-head totals), three with quant
    (then K̂, V̂ by quantize_kv_kernel, which needs the totals' μ_K and s_v)."""
    B, H, N, D = shape
    BH, nk = B * H, cdiv(N, block_k)
    nk_pad = cdiv(nk, NK_ALIGN) * NK_ALIGN
    dev = k.device
    cfg = config or PrecomputeConfig()
    interpret = launch.interpreting()
    per_split, nsplit = key_block_runs(nk_pad, BH, 0 if interpret else launch.num_sms(dev), cfg.blocks_per_program)
    f32 = dict(device=dev, dtype=torch.float32)
    hblk = launch.empty(BH, nk_pad, D, D, device=dev, dtype=torch.bfloat16)
    zblk = launch.empty(BH, nk, D, **f32)
    ksum = launch.empty(BH, nk, D, **f32)
    zpart = launch.empty(2, BH, nsplit, D, **f32)  # partial Σ z_j and Σ colsum K_j per program
    vmax = launch.empty(BH, nsplit, D, **f32) if quant else zpart  # partial max|V| per program
    totals = launch.empty(3 if quant else 2, BH, D, **f32)  # Z_tot, μ_K (, s_v)
    state = KVState(block_k, layout, shape, ksum, totals[1], hblk, zblk, totals[0])
    # K and V by pointer loads: with descriptor loads (and stores), Triton 3.6's software pipeliner failed on this
    # kernel at the Wan shapes (H100, 2026-11-27), though it compiled at N = 4096. h_j may leave by TMA stores.
    tma_store = cfg.tma_store and layouts.tma_hardware(dev)
    h_desc = descriptor(hblk.view(BH * nk_pad, D, D), D) if tma_store else hblk
    launch.run(
        "kv_precompute", kv_precompute_kernel, (nsplit, BH),
        k, v, hblk, h_desc, zblk, ksum, zpart, vmax,
        *k_strides, *v_strides,
        N, H, nk, nk_pad, per_split, nsplit,
        BK=block_k, D=D, QUANT=quant, INTERPRET=interpret, H_TMA=tma_store, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    launch.run("kv_totals", kv_totals_kernel, (BH,), zpart, vmax, totals[0], totals[1], totals[-1], N, nsplit, D=D,
               QUANT=quant, num_warps=1)
    if quant:
        state.sv = totals[2]
        state.k8 = launch.empty(BH, nk * block_k, D, device=dev, dtype=torch.int8)
        state.sk = launch.empty(BH, nk, **f32)
        state.v8t = launch.empty(BH, D, nk * block_k, device=dev, dtype=torch.float8_e4m3fn)
        launch.run(
            "quantize_kv", quantize_kv_kernel, (nk, BH),
            k, v, state.kmean, state.sv, state.k8, state.sk, state.v8t,
            *k_strides, *v_strides,
            N, H, nk,
            BK=block_k, D=D, INTERPRET=interpret, num_warps=cfg.quantize_warps,
        )
    return state
