"""Thin wrappers: validate inputs (one clear line per problem), allocate outputs, launch the kernels.

Shapes: q, k, v are [B, H, N, D] (layout "bhnd") or [B, N, H, D] ("bnhd", diffusers'); the kernels read
them through their strides, so no transposing copy is made. O comes back in q's layout and dtype.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from .linear_precompute import kv_precompute_kernel
from .linear_state import complement_z_kernel
from .lowbit_quant import quantize_kv_kernel
from .router import block_colsum_kernel, block_scores_kernel, pooled_project_kernel, topk_kernel
from .sla2_fwd import sla2_fwd_kernel
from .sla2_fwd_lowbit import sla2_fwd_lowbit_kernel
from .sla2_fwd_tma import EPI_CHUNKS, sla2_fwd_tma_kernel

LAYOUTS = ("bhnd", "bnhd")
DTYPES = (torch.bfloat16, torch.float16)
HEAD_DIMS = (64, 128)
BLOCKS = (64, 128)
FP8_MAX = 448.0
MIN_SCALE = 1e-12
ROUTER_PROJECT_ROWS = 32  # pooled blocks projected per program (W[h] is read once per 32 rows)
ROUTER_SCORE_TILE = (64, 64)  # (query blocks, key blocks) of scores per program
# head_dim columns per step of the router's 3xTF32 dots: whole 128-wide fp32 operands (hi and lo parts) spilled
# (255 registers, 118 spills on the H100); 16 columns at a time compile to 150 registers, no spills (sm_90).
ROUTER_DOT_CHUNK = 16
PRECOMPUTE_PROGRAMS_PER_SM = 2  # kv_precompute: programs per SM, each over a run of key blocks (partial Z sums)
Z_GATHER = 16  # complement_z_kernel: selected blocks' z_j gathered per step
# h_j is stored for a multiple of this many key blocks (zero blocks after the last): the inner dimension of the
# linear-state product (1 − selection) @ h. At nk = 1182 (Wan-14B) cuBLAS's bf16 GEMM ran at 220 TFLOP/s
# (4.1 ms, H100); rows of the mask must start 16-byte aligned for its fast kernels.
NK_ALIGN = 8


@dataclass(frozen=True)
class PrecomputeConfig:
    blocks_per_program: int | None = None  # None: enough programs for PRECOMPUTE_PROGRAMS_PER_SM per SM
    num_warps: int | None = None
    num_stages: int | None = None


# Every buffer the kernels write is allocated through these two names, so tests can poison them (NaN) and
# check that each element was written.
_empty = torch.empty
_empty_like = torch.empty_like


# The last compiled kernel of each launch site (registers, spills, shared memory, PTX) for kernels/bench.py.
LAST_COMPILED: dict = {}


def _launch(name: str, kernel, grid, *args, **kwargs):
    LAST_COMPILED[name] = kernel[grid](*args, **kwargs)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------------------------- checks


def _fail(msg: str):
    raise ValueError(f"sla2_kernels: {msg}")


def _dims(x: torch.Tensor, layout: str, name: str):
    """(B, H, N, D) and the element strides in that order, for either layout."""
    if layout not in LAYOUTS:
        _fail(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        _fail(f"{name} must be a 4-D tensor ({layout}), got {getattr(x, 'shape', type(x))}")
    if layout == "bhnd":
        (B, H, N, D), (sb, sh, sn, sd) = x.shape, x.stride()
    else:
        (B, N, H, D), (sb, sn, sh, sd) = x.shape, x.stride()
    return (B, H, N, D), (sb, sh, sn, sd)


def _check_qkv(tensors: dict, layout: str):
    dims = {}
    for name, t in tensors.items():
        dims[name] = _dims(t, layout, name)
        if t.dtype not in DTYPES:
            _fail(f"{name} dtype {t.dtype} is not supported; use one of {DTYPES}")
    first = next(iter(tensors.values()))
    for name, t in tensors.items():
        if dims[name][0] != dims[next(iter(tensors))][0]:
            _fail("shapes differ: " + ", ".join(f"{n} {tuple(x.shape)}" for n, x in tensors.items()))
        if t.dtype != first.dtype:
            _fail("dtypes differ: " + ", ".join(f"{n} {x.dtype}" for n, x in tensors.items()))
        if t.device != first.device:
            _fail("devices differ: " + ", ".join(f"{n} {x.device}" for n, x in tensors.items()))
    if first.device.type != "cuda" and not _interpreting():
        _fail(f"tensors are on {first.device}; the kernels need CUDA (or TRITON_INTERPRET=1 for tests)")
    B, H, N, D = dims[next(iter(tensors))][0]
    if D not in HEAD_DIMS:
        _fail(f"head_dim {D} is not supported; use one of {HEAD_DIMS}")
    if min(B, H, N) < 1:
        _fail(f"empty input: B={B}, H={H}, N={N}")
    return (B, H, N, D), {n: d[1] for n, d in dims.items()}


def _check_index_values(indices: torch.Tensor, nk: int):
    """Every row's key blocks in [0, nk), distinct and ascending (the low-bit kernel rounds P̃ against the running
    maximum in the row's order, which the reference takes ascending). A host synchronisation, so it runs only
    under the interpreter (CPU tests) or with SLA2_KERNELS_CHECK=1; the router always produces valid rows."""
    if not (_interpreting() or os.environ.get("SLA2_KERNELS_CHECK", "0") == "1"):
        return
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= nk:
        _fail(f"indices must lie in [0, {nk}) (key blocks), found values in [{lo}, {hi}]")
    if bool((indices[..., 1:] == indices[..., :-1]).any()):
        _fail("indices repeat a key block within a row; each query block's selection must be distinct")
    if bool((indices[..., 1:] < indices[..., :-1]).any()):
        _fail("indices must be ascending within each row (as the router returns them)")


def _check_block(name: str, value) -> int:
    if value not in BLOCKS:
        _fail(f"{name} must be one of {BLOCKS}, got {value!r}")
    return int(value)


def bhnd_view(t: torch.Tensor, layout: str) -> torch.Tensor:
    """t as a [B, H, N, D] view (no copy)."""
    return t if layout == "bhnd" else t.permute(0, 2, 1, 3)


def tma_ready(*tensors: torch.Tensor) -> bool:
    """Whether TMA can move tiles of these tensors: 16-byte aligned base, unit stride in the last dimension,
    every other stride a positive multiple of 16 bytes."""
    for t in tensors:
        es = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s <= 0 or (s * es) % 16 for s in t.stride()[:-1]):
            return False
    return True


def descriptor(t: torch.Tensor, rows: int, cols: int | None = None) -> TensorDescriptor:
    """Descriptor of a [B, H, N, D] (or [BH·nq, D, D]) view, blocks of `rows` rows of one (b, h) and `cols` of
    the last dimension (all of it by default)."""
    block = [1] * (t.dim() - 2) + [rows, cols or t.shape[-1]]
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block)


# ----------------------------------------------------------------------------------------------- precompute


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
    """h_j, z_j, Z_tot and the key-block sums in one pass over K, V; with quant also K̂, V̂ (SLA2.md §4–5)."""
    bk = _check_block("block_k", block_k)
    (B, H, N, D), strides = _check_qkv({"k": k, "v": v}, layout)
    BH, nk = B * H, triton.cdiv(N, bk)
    dev = k.device
    # Enough programs to fill the GPU, each over a contiguous run of key blocks.
    cfg = config or PrecomputeConfig()
    nsplit = 1 if _interpreting() else max(1, min(nk, triton.cdiv(PRECOMPUTE_PROGRAMS_PER_SM * _num_sms(dev), BH)))
    per_split = cfg.blocks_per_program or triton.cdiv(nk, nsplit)
    nsplit = triton.cdiv(nk, per_split)
    f32 = dict(device=dev, dtype=torch.float32)
    hblk = _empty(BH, triton.cdiv(nk, NK_ALIGN) * NK_ALIGN, D, D, device=dev, dtype=torch.bfloat16)
    hblk[:, nk:].zero_()
    zblk = _empty(BH, nk, D, **f32)
    ksum = _empty(BH, nk, D, **f32)
    zpart = _empty(2, BH, nsplit, D, **f32)  # partial Σ z_j and Σ colsum K_j per program
    vmax = _empty(BH, nsplit, D, **f32) if quant else zpart
    # No TMA variant: with descriptor loads and stores, Triton 3.6's software pipeliner failed on this kernel at
    # the Wan shapes (H100, 2026-11-27), though it compiled at N = 4096.
    _launch(
        "kv_precompute", kv_precompute_kernel, (nsplit, BH),
        k, v, hblk, zblk, ksum, zpart, vmax,
        *strides["k"], *strides["v"],
        N, H, nk, hblk.shape[1], per_split, nsplit,
        BK=bk, D=D, QUANT=quant, INTERPRET=_interpreting(),
        # 4 warps, 2 stages: best of the H100 sweep (2026-11-27, run 9): 0.223 ms vs 0.238 at 3 stages, 0.360 at
        # 8 warps with 16 blocks a program
        num_warps=cfg.num_warps or 4, num_stages=cfg.num_stages or 2,
    )
    totals = zpart.sum(dim=2)  # [2, BH, D]: Z_tot, Σ_tokens K (each a contiguous [BH, D])
    state = KVState(bk, layout, (B, H, N, D), ksum, totals[1] / N, hblk, zblk, totals[0])
    if quant:
        sv = (vmax.amax(dim=1) / FP8_MAX).clamp_min(MIN_SCALE)
        k8 = _empty(BH, nk * bk, D, device=dev, dtype=torch.int8)
        sk = _empty(BH, nk, **f32)
        v8t = _empty(BH, D, nk * bk, device=dev, dtype=torch.float8_e4m3fn)
        _launch(
            "quantize_kv", quantize_kv_kernel, (nk, BH),
            k, v, state.kmean, sv, k8, sk, v8t,
            *strides["k"], *strides["v"],
            N, H, nk,
            BK=bk, D=D, INTERPRET=_interpreting(), num_warps=4,
        )
        state.k8, state.sk, state.v8t, state.sv = k8, sk, v8t, sv
    return state


def _check_state(state: KVState, k: torch.Tensor, block_k: int, layout: str, quant: bool):
    shape = _dims(k, layout, "k")[0]
    if state.block_k != block_k or tuple(state.shape) != tuple(shape):
        _fail(f"kv_state was built for block_k={state.block_k}, shape {state.shape}; "
              f"this call has block_k={block_k}, shape {shape}")
    if quant and not state.quant:
        _fail("kv_state was built with quant=False; build it with quant=True for the low-bit forward")


# ----------------------------------------------------------------------------------------------- router


def router(q, k, proj_q, proj_k, *, block_q: int, block_k: int, topk: int, layout: str, kv_state=None):
    """Block scores fp32 [B, H, nq, nk] and the Top-k key blocks int32 [B, H, nq, topk], ascending."""
    bq, bk = _check_block("block_q", block_q), _check_block("block_k", block_k)
    (B, H, N, D), strides = _check_qkv({"q": q, "k": k}, layout)
    for name, w in (("proj_q", proj_q), ("proj_k", proj_k)):
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (H, D, D):
            _fail(f"{name} must be [H, D, D] = [{H}, {D}, {D}], got {tuple(getattr(w, 'shape', ()))}")
        if w.device != q.device:
            _fail(f"{name} is on {w.device}, q on {q.device}")
    BH, nq, nk = B * H, triton.cdiv(N, bq), triton.cdiv(N, bk)
    if not isinstance(topk, int) or not 1 <= topk <= nk:
        _fail(f"topk must be an int in [1, {nk}] (number of key blocks), got {topk!r}")
    dev = q.device
    f32 = dict(device=dev, dtype=torch.float32)
    if kv_state is not None:
        _check_state(kv_state, k, bk, layout, quant=False)
        ksum, kmean = kv_state.ksum, kv_state.kmean
    else:
        ksum = _empty(BH, nk, D, **f32)
        _launch("block_colsum", block_colsum_kernel, (nk, BH), k, ksum, *strides["k"], N, H, nk,
                BLK=bk, D=D, num_warps=4)
        kmean = ksum.sum(dim=1) / N
    wq = proj_q.detach().to(torch.float32).contiguous()
    wk = proj_k.detach().to(torch.float32).contiguous()
    qsum = _empty(BH, nq, D, **f32)
    _launch("block_colsum", block_colsum_kernel, (nq, BH), q, qsum, *strides["q"], N, H, nq,
            BLK=bq, D=D, num_warps=4)
    qp, kp = _empty(BH, nq, D, **f32), _empty(BH, nk, D, **f32)
    rb = ROUTER_PROJECT_ROWS
    _launch("pooled_project", pooled_project_kernel, (triton.cdiv(nq, rb), BH),
            qsum, qsum, wq, qp, N, H, nq, 1.0, RB=rb, BLK=bq, D=D, DC=ROUTER_DOT_CHUNK, SUB_MEAN=False,
            num_warps=4)
    _launch("pooled_project", pooled_project_kernel, (triton.cdiv(nk, rb), BH),
            ksum, kmean, wk, kp, N, H, nk, 1.0 / math.sqrt(D), RB=rb, BLK=bk, D=D, DC=ROUTER_DOT_CHUNK,
            SUB_MEAN=True, num_warps=4)
    scores = _empty(B, H, nq, nk, **f32)
    qt, kt = ROUTER_SCORE_TILE
    _launch("block_scores", block_scores_kernel, (triton.cdiv(nq, qt), triton.cdiv(nk, kt), BH),
            qp, kp, scores, nq, nk, QT=qt, KT=kt, D=D, DC=ROUTER_DOT_CHUNK, num_warps=4)
    return scores, _topk(scores, topk)


TOPK_MAX_RADIX = 2048  # widest (power-of-two padded) row for topk_kernel; wider rows use torch.topk
# (rows per program, warps) of topk_kernel by padded row width. H100 sweep (kernels/bench.py, 2026-11-27):
# nk = 512: (1, 1) 0.021 ms, (4, 4) 0.027, torch 0.10; nk = 1182 (2048 padded): (1, 4) 0.55 ms, (1, 1) 0.69,
# (4, 4) 1.36, torch.topk + sort 1.13. Wider than 2048 was not measured: torch there.
TOPK_LAUNCH: dict = {512: (1, 1), 2048: (1, 4)}
TOPK_DEFAULT_LAUNCH = (1, 4)


def _topk(scores: torch.Tensor, topk: int) -> torch.Tensor:
    """Row-wise Top-k of [B, H, nq, nk] scores -> int32 [B, H, nq, topk], ascending.

    Radix selection (topk_kernel) up to TOPK_MAX_RADIX padded columns, torch.topk above (see TOPK_LAUNCH).
    """
    nkp = triton.next_power_of_2(scores.shape[-1])
    if nkp > TOPK_MAX_RADIX:
        return scores.topk(topk, dim=-1, sorted=False).indices.sort(dim=-1).values.to(torch.int32)
    return topk_radix(scores, topk, *TOPK_LAUNCH.get(nkp, TOPK_DEFAULT_LAUNCH))


def topk_radix(scores: torch.Tensor, topk: int, rows_per_program: int, num_warps: int) -> torch.Tensor:
    """topk_kernel on any row width (the benchmark's Top-k sweep calls it directly)."""
    B, H, nq, nk = scores.shape
    rows = B * H * nq
    indices = _empty(B, H, nq, topk, device=scores.device, dtype=torch.int32)
    _launch("topk", topk_kernel, (triton.cdiv(rows, rows_per_program),), scores, indices, rows, nk, topk,
            R=rows_per_program, NKP=triton.next_power_of_2(nk), num_warps=num_warps)
    return indices


# ----------------------------------------------------------------------------------------------- forward

try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - older layouts of triton
    OutOfResources = RuntimeError


@dataclass(frozen=True)
class FwdConfig:
    """Launch configuration of the forward kernels (every kernel takes one selected key block per iteration)."""

    num_warps: int
    num_stages: int
    # Low-bit: False = one pass, P̃ rounded against the running row max (SageAttention2), as the reference
    # (fake_quant_sparse_attention); True = two passes against the exact row max, which matches
    # fake_quant_sparse_attention(..., running_max=False).
    exact_max: bool = False
    tma: bool = False  # bf16 only: tiles by TMA descriptors (sla2_fwd_tma.py) where the tensors allow it
    maxnreg: int | None = None  # register cap a thread (None: the compiler's choice)


# Set by kernels/bench.py after its sweep, to time the rows with the configuration it measured best.
CONFIG_OVERRIDE: dict = {}


def pointer_config(block_q: int, head_dim: int) -> FwdConfig:
    """The pointer kernels' best (3 stages; 8 warps for 128-row or 128-wide tiles). H100, Wan-1.3B at 97%: bf16
    (8, 3) 0.849 ms, (8, 2) 1.044; at 90%, low-bit with exact_max (two passes) (8, 3) 2.531, (8, 2) 2.686
    (kernels/README.md)."""
    return FwdConfig(8 if (block_q == 128 or head_dim == 128) else 4, 3)


def default_config(block_q: int, block_k: int, head_dim: int, quant: bool) -> FwdConfig:
    """bf16: TMA tiles, 4 warps, 2 stages (two programs an SM); low-bit: pointer_config. H100 sweeps
    (2026-11-27, Wan-1.3B at 97%, kernels/README.md): sparse loop with TMA (4, 2) 0.427 ms, (8, 2, maxnreg
    128) 0.440, (8, 3) 0.509, pointer kernel (8, 3) 0.575. Where TMA cannot be used (see
    sla2_forward) the bf16 default becomes pointer_config."""
    if quant in CONFIG_OVERRIDE:
        return CONFIG_OVERRIDE[quant]
    return pointer_config(block_q, head_dim) if quant else FwdConfig(4, 2, tma=True)


def tma_hardware(device: torch.device) -> bool:
    """TMA exists from Hopper (sm_90) on. Triton lowers descriptors to plain loads on older GPUs, where the
    4-warp TMA configuration spills (sm_80 compile: 10 KB of stack a thread), so they take the pointer kernels.
    Under the interpreter (CPU tests) the TMA kernels run anywhere."""
    if _interpreting():
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def stage_fallbacks(cfg, field: str = "num_stages") -> list:
    """cfg, then the same with one pipeline stage in `field` (less shared memory for the pipelined tiles): the
    configurations a launch tries in turn, forward (FwdConfig) and backward (BwdConfig) alike."""
    return [cfg] if getattr(cfg, field) == 1 else [cfg, replace(cfg, **{field: 1})]


# (kernel key) -> the first configuration that compiled within the GPU's resources
_WORKING_CONFIG: dict = {}


def _alpha_view(alpha, B: int, H: int, nq: int, device) -> torch.Tensor:
    """alpha as an fp32 [B, H, nq] view (expand: stride 0 where it broadcasts, no copy of the values)."""
    a = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha))
    a = a.to(device=device, dtype=torch.float32)
    if a.dim() <= 3:
        try:
            return a.expand(B, H, nq)
        except RuntimeError:
            pass
    _fail(f"alpha of shape {tuple(a.shape)} does not broadcast to [B, H, nq] = [{B}, {H}, {nq}]")


def complement_mask(indices: torch.Tensor, nk: int, align: int = NK_ALIGN) -> torch.Tensor:
    """bf16 [B·H, nq, nk rounded up to align]: 1 where query block I did NOT select key block j, 0 where it did
    and in the padding columns. The shape of the router's scores; what the linear branch sums over."""
    bh, nq, topk = indices.numel() // (indices.shape[-2] * indices.shape[-1]), indices.shape[-2], indices.shape[-1]
    keep = torch.ones(bh, nq, triton.cdiv(nk, align) * align, device=indices.device, dtype=torch.bfloat16)
    keep[:, :, nk:] = 0.0
    return keep.scatter_(2, indices.reshape(bh, nq, topk).long(), 0.0)


def linear_state(indices: torch.Tensor, kv_state: KVState, *, block_q: int):
    """The linear branch's per-query-block state (SLA2.md §4): (H_I bf16 [BH, nq, D, D], Z_I fp32 [BH, nq, D]),
    H_I = Σ_{j not selected by I} h_j and Z_I likewise.

    H_I is one batched product (1 − selection) @ h on the tensor cores, [nq, nk] × [nk, D²] per head (bf16
    operands, fp32 accumulation): ~50 GFLOP at the Wan-1.3B shape instead of gathering every selected block's
    tiles per query block. The 0/1 mask has the shape of the router's scores, [B·H, nq, nk] (bf16).
    """
    B, H, N, D = kv_state.shape
    BH, nq, nk = B * H, triton.cdiv(N, block_q), triton.cdiv(N, kv_state.block_k)
    idx = indices.reshape(BH, nq, indices.shape[-1])
    keep = complement_mask(idx, nk)  # its padding columns meet h's zero padding blocks
    h_i = torch.bmm(keep, kv_state.hblk.view(BH, keep.shape[-1], D * D)).view(BH, nq, D, D)
    z_i = _empty(BH, nq, D, device=idx.device, dtype=torch.float32)
    _launch("complement_z", complement_z_kernel, (nq, BH), idx.to(torch.int32).contiguous(), kv_state.zblk,
            kv_state.ztot, z_i, nq, nk, idx.shape[-1], D=D, KC=Z_GATHER, num_warps=4)
    return h_i, z_i


def sla2_forward(q, k, v, indices, alpha, *, block_q: int, block_k: int, quant: bool, layout: str,
                 kv_state: KVState | None = None, config: FwdConfig | None = None, linear: bool | None = None,
                 lin_state: tuple | None = None):
    """SLA2 forward: (o in q's layout and dtype, lse fp32 [B, H, N]).

    indices: int [B, H, nq, topk], each row's selected key blocks (ascending, distinct, in [0, nk));
    alpha: fp32 broadcastable to [B, H, nq]. `linear=False` drops the linear branch (benchmarks only).
    lin_state: (H_I, Z_I) from `linear_state` for these indices, if the caller already has them.
    """
    bq, bk = _check_block("block_q", block_q), _check_block("block_k", block_k)
    (B, H, N, D), strides = _check_qkv({"q": q, "k": k, "v": v}, layout)
    BH, nq, nk = B * H, triton.cdiv(N, bq), triton.cdiv(N, bk)
    if not isinstance(indices, torch.Tensor) or indices.dim() != 4 or tuple(indices.shape[:3]) != (B, H, nq):
        _fail(f"indices must be [B, H, nq, topk] = [{B}, {H}, {nq}, topk], got {tuple(getattr(indices, 'shape', ()))}")
    if indices.dtype not in (torch.int32, torch.int64) or indices.device != q.device:
        _fail(f"indices must be int32/int64 on {q.device}, got {indices.dtype} on {indices.device}")
    topk = indices.shape[-1]
    if not 1 <= topk <= nk:
        _fail(f"indices select {topk} key blocks per query block; must be in [1, {nk}]")
    _check_index_values(indices, nk)
    idx = indices.to(torch.int32).contiguous()
    alpha3 = _alpha_view(alpha, B, H, nq, q.device)
    if kv_state is None:
        kv_state = precompute(k, v, block_k=bk, layout=layout, quant=quant)
    else:
        _check_state(kv_state, k, bk, layout, quant)
    cfg = config or default_config(bq, bk, D, quant)
    if linear is None:
        linear = topk < nk  # every block selected: nothing left for the linear branch, α = 1
    if linear and lin_state is not None:
        h_i, z_i = lin_state
        if (tuple(h_i.shape), h_i.dtype, tuple(z_i.shape), z_i.dtype) != (
                (BH, nq, D, D), torch.bfloat16, (BH, nq, D), torch.float32) or h_i.device != q.device:
            _fail(f"lin_state must be (bf16 [{BH}, {nq}, {D}, {D}], fp32 [{BH}, {nq}, {D}]) on {q.device} "
                  f"(api.linear_state), got ({h_i.dtype} {tuple(h_i.shape)}, {z_i.dtype} {tuple(z_i.shape)})")
        h_i, z_i = h_i.contiguous(), z_i.contiguous()
    elif linear:
        h_i, z_i = linear_state(idx, kv_state, block_q=bq)
    else:
        h_i = z_i = alpha3  # never read
    o = _empty_like(q)
    _, so = _dims(o, layout, "o")
    lse = _empty(B, H, N, device=q.device, dtype=torch.float32)
    s = kv_state
    if cfg.tma and (quant or not tma_hardware(q.device)
                    or not tma_ready(*(bhnd_view(t, layout) for t in (q, k, v, o)), *((h_i,) if linear else ()))):
        # The low-bit kernel has no TMA variant: TMA tiles of K̂, V̂ᵀ measured no faster (H100, 1.3B at 97%:
        # 1.094-1.100 vs 1.099-1.105 ms); or the GPU has no TMA, or the tensors' strides or alignment do not
        # suit it. A caller's own configuration keeps its warps and stages; the default becomes the pointer one.
        cfg = replace(cfg, tma=False) if config is not None else pointer_config(bq, D)
    scale = 1.0 / math.sqrt(D)
    key = (quant, bq, bk, D, q.dtype, linear, cfg)
    for c in [_WORKING_CONFIG[key]] if key in _WORKING_CONFIG else stage_fallbacks(cfg):
        common = dict(BQ=bq, BK=bk, D=D, LINEAR=linear,
                      INTERPRET=_interpreting(), num_warps=c.num_warps, num_stages=c.num_stages)
        if c.maxnreg:
            common["maxnreg"] = c.maxnreg
        try:
            if quant:
                _launch(
                    "sla2_fwd_lowbit", sla2_fwd_lowbit_kernel, (nq, BH),
                    q, idx, alpha3, o, lse, h_i, z_i, s.k8, s.sk, s.v8t, s.sv, s.kmean,
                    *strides["q"], *so, *alpha3.stride(), N, H, nq, nk, topk, scale,
                    EXACT_MAX=c.exact_max, **common,
                )
            elif c.tma:
                # without a linear branch the kernel never reads H_I: an unwritten placeholder (no fill launch)
                hd = h_i.view(BH * nq, D, D) if linear else q.new_empty(1, D, D, dtype=torch.bfloat16)
                q4, k4, v4, o4 = (bhnd_view(t, layout) for t in (q, k, v, o))
                _launch(
                    "sla2_fwd_tma", sla2_fwd_tma_kernel, (nq, BH),
                    descriptor(q4, bq), descriptor(k4, bk), descriptor(v4, bk), descriptor(o4, bq),
                    descriptor(q4, bq, D // EPI_CHUNKS), descriptor(hd, D // EPI_CHUNKS),
                    idx, alpha3, lse, z_i, *alpha3.stride(), N, H, nq, topk, scale, EPI_CHUNKS=EPI_CHUNKS, **common,
                )
            else:
                _launch(
                    "sla2_fwd", sla2_fwd_kernel, (nq, BH),
                    q, k, v, idx, alpha3, o, lse, h_i, z_i,
                    *strides["q"], *strides["k"], *strides["v"], *so, *alpha3.stride(),
                    N, H, nq, topk, scale, **common,
                )
        except OutOfResources:
            continue  # e.g. shared memory of the pipelined tiles: try the next, smaller configuration
        _WORKING_CONFIG[key] = c
        break
    else:
        _fail(f"no forward configuration fits this GPU's resources (tried from {cfg})")
    return o, lse
