"""Everything derived from K and V alone, in one pass: the linear branch's per-key-block sums, the router's key
pooling sums and (low-bit) the quantised K̂, V̂ (docs/method.md, Linear branch; Low-bit sparse branch and QAT)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from . import launch
from .checks import check_block, check_qkv
from .constants import FP8_E4M3_MAX, MIN_SCALE
from .layouts import NK_ALIGN
from .linear_precompute import kv_precompute_kernel
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


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def precompute(k: torch.Tensor, v: torch.Tensor, *, block_k: int, layout: str, quant: bool = False,
               config: PrecomputeConfig | None = None) -> KVState:
    """h_j, z_j, Z_tot and the key-block sums in one pass over K, V; with quant also K̂, V̂."""
    bk = check_block("block_k", block_k)
    (B, H, N, D), strides = check_qkv({"k": k, "v": v}, layout)
    BH, nk = B * H, triton.cdiv(N, bk)
    dev = k.device
    # Enough programs to fill the GPU, each over a contiguous run of key blocks.
    cfg = config or PrecomputeConfig()
    interpret = launch.interpreting()
    nsplit = 1 if interpret else max(1, min(nk, triton.cdiv(PRECOMPUTE_PROGRAMS_PER_SM * _num_sms(dev), BH)))
    per_split = cfg.blocks_per_program or triton.cdiv(nk, nsplit)
    nsplit = triton.cdiv(nk, per_split)
    f32 = dict(device=dev, dtype=torch.float32)
    hblk = launch.empty(BH, triton.cdiv(nk, NK_ALIGN) * NK_ALIGN, D, D, device=dev, dtype=torch.bfloat16)
    hblk[:, nk:].zero_()
    zblk = launch.empty(BH, nk, D, **f32)
    ksum = launch.empty(BH, nk, D, **f32)
    zpart = launch.empty(2, BH, nsplit, D, **f32)  # partial Σ z_j and Σ colsum K_j per program
    vmax = launch.empty(BH, nsplit, D, **f32) if quant else zpart
    # No TMA variant: with descriptor loads and stores, Triton 3.6's software pipeliner failed on this kernel at
    # the Wan shapes (H100, 2026-11-27), though it compiled at N = 4096.
    launch.run(
        "kv_precompute", kv_precompute_kernel, (nsplit, BH),
        k, v, hblk, zblk, ksum, zpart, vmax,
        *strides["k"], *strides["v"],
        N, H, nk, hblk.shape[1], per_split, nsplit,
        BK=bk, D=D, QUANT=quant, INTERPRET=interpret, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    totals = zpart.sum(dim=2)  # [2, BH, D]: Z_tot, Σ_tokens K (each a contiguous [BH, D])
    state = KVState(bk, layout, (B, H, N, D), ksum, totals[1] / N, hblk, zblk, totals[0])
    if quant:
        sv = (vmax.amax(dim=1) / FP8_E4M3_MAX).clamp_min(MIN_SCALE)
        k8 = launch.empty(BH, nk * bk, D, device=dev, dtype=torch.int8)
        sk = launch.empty(BH, nk, **f32)
        v8t = launch.empty(BH, D, nk * bk, device=dev, dtype=torch.float8_e4m3fn)
        launch.run(
            "quantize_kv", quantize_kv_kernel, (nk, BH),
            k, v, state.kmean, sv, k8, sk, v8t,
            *strides["k"], *strides["v"],
            N, H, nk,
            BK=bk, D=D, INTERPRET=interpret, num_warps=4,
        )
        state.k8, state.sk, state.v8t, state.sv = k8, sk, v8t, sv
    return state
