"""Launch configurations and their measured defaults: one home for every tile size, warp count and stage count
the host code picks, with the measurements that chose them. Unless a line says otherwise: NVIDIA H100 80GB HBM3,
torch 2.11, Triton 3.6, 2026-11-27, Wan-1.3B shape (B1 H12 N32760 D128, b_q 128, b_k 64) at 97% sparsity, medians
of triton.testing.do_bench. The benchmarks in kernels/benchmarks/ re-run these sweeps (`--sweep`) and pass their
pick as `config=`; a new default is an edit here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# ------------------------------------------------------------------------------------------------ forward


@dataclass(frozen=True)
class FwdConfig:
    """Launch configuration of the forward kernels (every kernel takes one selected key block per iteration)."""

    num_warps: int
    num_stages: int
    # Low-bit: False = one pass, P̃ rounded against the running row max (SageAttention2), as the reference
    # (fake_quant_sparse_attention); True = two passes against the exact row max, which matches
    # fake_quant_sparse_attention(..., running_max=False).
    exact_max: bool = False
    # tiles by TMA descriptors where the GPU and the tensors allow it: sla2_fwd_tma.py (bf16), sla2_fwd_lowbit_tma.py
    # (low-bit, one pass: no exact_max)
    tma: bool = False
    maxnreg: int | None = None  # register cap a thread (None: the compiler's choice)
    # TMA kernels: query rows a program (0: b_q; must divide b_q). A 64-row program holds half the accumulator and
    # score tiles, so more programs share an SM and hide each other's softmax latency.
    rows: int = 0
    # TMA kernels (the pointer kernels ignore it): True, the linear branch's O_l from the pass over Q before the main
    # kernel (query_pass.py), which then only mixes it in; False, computed in the main kernel's epilogue
    # (tma_linear_mix, Q and H_I read in every program's tail). The epilogue is faster: H100, 2026-12-07, Wan-1.3B at
    # 97%, main kernel 0.617 against 0.669 ms with the pass (bf16), 0.633 against 0.704 (low bit); the pass with the
    # linear branch alone 0.139 ms (bench.py times the other variant beside its rows).
    linear_pass: bool = False
    # bf16 TMA kernel: its twin written in Gluon (sla2_fwd_gluon.py), where it suits the call (forward.fwd_gluon_suits;
    # whole query blocks a program, no O_s stored, the linear branch in the epilogue): each step's K, V and the
    # epilogue's H_I loaded a softmax ahead of use, Q kept in shared memory through the loop.
    gluon: bool = False
    # the Gluon twin's overlapped loop (sla2_fwd_gluon.py): step j's softmax runs while step j − 1's P V is in the
    # tensor cores; b_q / 16 warps, one program an SM, three stages, whatever num_warps and num_stages say.
    gluon_overlap: bool = False

    def __post_init__(self):
        if self.rows and not self.tma:
            raise ValueError("FwdConfig: rows (query rows a program) is a setting of the TMA kernels; use tma=True")
        if self.gluon and not self.tma:
            raise ValueError("FwdConfig: gluon is a variant of the TMA kernel; use tma=True with it")
        if self.gluon_overlap and not self.gluon:
            raise ValueError("FwdConfig: gluon_overlap is a loop of the Gluon kernel; use gluon=True with it")
        if self.tma and self.exact_max:
            raise ValueError("FwdConfig: exact_max (two passes) is a variant of the pointer low-bit kernel only; "
                             "use tma=False with it")

    def flipped(self, field: str) -> FwdConfig:
        """This configuration with the boolean option `field` flipped and the options that depend on it following:
        TMA off takes rows and the Gluon kernel with it, the Gluon kernel off its overlapped loop; the Gluon kernel
        or its loop on brings what it is a variant of."""
        on = not getattr(self, field)
        changes = {field: on}
        if not on and field == "tma":
            changes.update(rows=0, gluon=False, gluon_overlap=False)
        elif not on and field == "gluon":
            changes.update(gluon_overlap=False)
        elif on and field in ("gluon", "gluon_overlap"):
            changes.update(tma=True, gluon=True, exact_max=False)
        return replace(self, **changes)


def pointer_config(block_q: int, head_dim: int) -> FwdConfig:
    """The pointer kernels' best (3 stages; 8 warps for 128-row or 128-wide tiles). H100, 2026-11-27: bf16 (8, 3)
    0.849 ms, (8, 2) 1.044; at 90%, low-bit with exact_max (two passes) (8, 3) 2.531, (8, 2) 2.686."""
    return FwdConfig(8 if (block_q == 128 or head_dim == 128) else 4, 3)


def default_fwd_config(block_q: int, block_k: int, head_dim: int, quant: bool) -> FwdConfig:
    """bf16: TMA tiles, 4 warps, 2 stages (two programs an SM). H100, 2026-11-27, sparse loop with TMA (4, 2)
    0.427 ms, (8, 2, maxnreg 128) 0.440, (8, 3) 0.509, pointer kernel (8, 3) 0.575. Low-bit: TMA tiles
    (sla2_fwd_lowbit_tma.py), 4 warps, 2 stages, a 128-row query block in two 64-row programs under a 128-register
    cap (four programs an SM). H100, 2026-12-06, main kernel at the Wan-1.3B shape: 0.609 ms, against (4, 3) with
    128-row programs 0.654, (4, 3, 64 rows) uncapped (167 registers, three an SM) 0.677, (8, 2, maxnreg 128) 0.653,
    the pointer kernel (8, 3) 0.859; the bf16 main kernel 0.618 in the same run. Where TMA cannot be used
    (forward.run_forward) either default becomes pointer_config. bf16 with the Gluon twin (gluon=True, where it suits
    the call: forward.fwd_gluon_suits): H100, 2026-12-07, Wan-1.3B at 97%, main kernel 0.564 against 0.638 ms timed
    in turns (o within 5e-8 relative L1, lse equal), whole forward 0.847 against 0.902 ms as a graph (`bench.py`)."""
    if not quant:
        return FwdConfig(4, 2, tma=True, gluon=True)
    rows = 64 if block_q > 64 and block_q % 64 == 0 else 0
    return FwdConfig(4, 2, tma=True, maxnreg=128, rows=rows)


# query_pass_kernel (before the TMA forward kernels; one query block a program): warps. sm_90a compile with the
# GPU's Triton 3.6: Q̂ alone (the low-bit default) 80 registers a thread at 8 warps, three programs an SM; with the
# linear branch 127 (bf16) or 164 (low bit), no spills; at 4 warps 168, or 255 and 0.5 KB of stack with the linear
# branch. H100, 2026-12-07: Q̂ alone 0.066 ms at Wan-1.3B, 0.406 at 14B. Its predecessor, the same quantisation of
# Q by pointer loads, H100, 2026-12-06: Wan-1.3B 0.0734 ms at 8 warps against 0.0777 at 4 (151 MB moved: 2.1 TB/s
# against a 3.0 TB/s copy), 14B 0.488 against 0.501 (`bench.py --sweep` times both).
QUERY_PASS_WARPS = 8

# The TMA forward's epilogue product e H_I takes head_dim in this many pieces. The whole of e in fp32 beside acc
# spilled 72 registers a thread (sm_90 compile, D = 128); 2 pieces spill none, 4 pieces 4. H100, 2026-11-27:
# whole forward 0.976 → 0.943 ms as a CUDA graph.
EPI_CHUNKS = 2

# ------------------------------------------------------------------------------------------------ backward


@dataclass(frozen=True)
class BwdConfig:
    """Launch configuration of the dq and dk/dv kernels (the dq loop takes one selected key block a step)."""

    dq_warps: int
    dq_stages: int
    dkdv_warps: int
    dkdv_stages: int
    qs: int = 0  # dk/dv sparse loop: query rows per iteration (0: b_q; must divide b_q)
    dq_rows: int = 0  # dq kernel: query rows per program (0: b_q; must divide b_q)
    dq_tma: bool = False  # dq kernel: TMA tiles (sla2_bwd_tma.py)
    dkdv_tma: bool = False  # dk/dv kernel: TMA tiles
    # dk/dv TMA kernel: K and V as the score products' register operand (dot.register_operand). From shared memory,
    # Sᵀ = K Qᵀ and dPᵀ = V dOᵀ read 64 KB a 32-row step for 2.1 MFLOP, about as many cycles as the tensor cores
    # take for the step; from registers half that. sm_90a compile with Triton 3.6 at the Wan shape: 255 registers and
    # 160 bytes of stack, all outside the loop, 82 KB of shared memory against 115. Off here because only the TMA
    # kernel has it; default_bwd_config turns it on where it uses that kernel.
    dkdv_register_kv: bool = False
    # dq kernel written in Gluon (sla2_bwd_dq_gluon.py), where it suits the problem (backward.gluon_dq_suits): the
    # same arithmetic with each step's K, V loads issued a softmax ahead of their use, which Triton's pipeliner
    # does not do. 64-row programs of 4 warps whatever dq_rows and dq_warps say.
    dq_gluon: bool = False
    # the Gluon dq kernel's step with P's exponentials issued while dO Vᵀ is still in flight (a wait that leaves that
    # product outstanding, then one for it before dP is read), where the other loop waits for both score products
    # first. sm_90a compile with Triton 3.6: 252 registers, no stack, all 32 exp2 of a step beside the product
    # (compile_stats' mufu_beside_wgmma) against 0. Off here because only the Gluon kernel has it; default_bwd_config
    # turns it on with that kernel.
    dq_gluon_overlap: bool = False
    # linear kernel: query rows a step and columns of dH_I a pass (powers of two ≥ 16; b_q / head_dim if larger).
    # H100, 2026-11-27, with a bf16 H_I and run before the dq kernel: 32 rows, all 128 columns, 4 warps, 1 stage
    # 0.443 ms; 64 columns 0.459; 16 rows 0.50–0.57; 8 warps 0.59; 2 stages 0.54 (spills); one pass 0.553.
    linear_rows: int = 32
    linear_cols: int = 128
    linear_warps: int = 4
    linear_stages: int = 1

    def __post_init__(self):
        if self.dkdv_register_kv and not self.dkdv_tma:
            raise ValueError("BwdConfig: dkdv_register_kv is a setting of the TMA dk/dv kernel; use dkdv_tma=True")
        if self.dq_gluon_overlap and not self.dq_gluon:
            raise ValueError("BwdConfig: dq_gluon_overlap is a loop of the Gluon dq kernel; use dq_gluon=True with it")

    def flipped(self, field: str) -> "BwdConfig":
        """This configuration with the boolean option `field` flipped and the options that depend on it following:
        a kernel off takes its options with it (the Gluon dq kernel its overlapped loop, the TMA dk/dv kernel its
        register operands), an option on brings its kernel."""
        on = not getattr(self, field)
        changes = {field: on}
        if not on and field == "dq_gluon":
            changes.update(dq_gluon_overlap=False)
        elif on and field == "dq_gluon_overlap":
            changes.update(dq_gluon=True)
        elif not on and field == "dkdv_tma":
            changes.update(dkdv_register_kv=False)
        elif on and field == "dkdv_register_kv":
            changes.update(dkdv_tma=True)
        return replace(self, **changes)

    def pointer_dkdv(self) -> "BwdConfig":
        """This configuration for the pointer dk/dv kernel: the TMA kernel's own options off (flipped)."""
        return self.flipped("dkdv_tma") if self.dkdv_tma else self


# Whether SLA2Attention's bf16 forward keeps its sparse output O_s for the backward (backend.keeps_sparse_output):
# the dq loop then knows Δ = α dO·O_s before it starts and takes three products a step instead of four (P K and
# its fp32 accumulator go; the row sums of P ⊙ dP stay, dα's exact Ds), for one more tensor the size of o kept per
# call (100 MB at the Wan-1.3B shape) and its write in the forward. Off: the write costs the forward more than the
# backward gains. H100, 2026-12-07, Wan-1.3B at 97% (`bench_train.py`, which times the op both ways): fwd+bwd 3.829
# against 3.786 ms; forward 1.077 against 1.002 (storing O_s, the bf16 TMA kernel spills 56 registers a thread),
# backward 2.767 against 2.834 (dq kernel 0.686 against 0.703); peak 779 against 588 MB.
BF16_SPARSE_OUTPUT = False


def training_keeps_sparse_output(quant: bool) -> bool:
    """Whether a forward whose gradients are all to come keeps its sparse output for the backward: QAT's O_s^q
    always (dα reads it), bf16's O_s per BF16_SPARSE_OUTPUT. SLA2Attention narrows it to the gradients actually
    asked for (backend.keeps_sparse_output); the benchmarks time the training forward with it."""
    return quant or BF16_SPARSE_OUTPUT


def default_bwd_config(block_q: int, block_k: int, head_dim: int) -> BwdConfig:
    warps = 8 if (block_q == 128 or head_dim == 128) else 4
    if (block_q, block_k, head_dim) == (128, 64, 128):
        # H100, 2026-11-27: dk/dv 1.42 ms with 4 warps, 3 stages and 32 query rows per step vs 1.99 at 64 rows and
        # 2.81 at 8 warps, 2 stages, 128 rows; dq 1.23 ms with 64-row programs at 4 warps (two per SM) vs 1.51 for
        # one 8-warp program per query block. TMA tiles: dq 1.135 vs 1.218 ms, dk/dv 1.351 vs 1.399 (those dq
        # times include the prologue, 0.55 ms then). The dq kernel alone, 2026-11-27: 0.606 ms with TMA tiles at
        # 4 warps and 2 stages, 0.603 at 1 stage, 0.68 at 8 warps, 0.71 pointer.
        # K, V as the dk/dv score products' register operands, H100, 2026-12-07 (bench_train.py, bit-equal dK, dV):
        # 16.58 against 18.11 ms at the Wan-14B shape at 97%, 1.301 against 1.303 at Wan-1.3B; with the identity
        # applied at the load (82 KB of shared memory), 13:16 UTC: 16.19 against 17.41, 1.332 against 1.347.
        # The sweep at 1.3B that hour: (4 warps, 3 stages, 32 rows) with them 1.306 ms, without 1.320; 2 stages
        # 1.355 / 1.347; the pointer kernel 1.391.
        # The dq kernel in Gluon (dq_gluon), H100, 2026-12-07 (`bench_train.py`, in turns, dQ bit-equal): 0.596
        # against 0.719 ms, with Δ from O_s 0.549 against 0.700. Its overlapped loop (dq_gluon_overlap), H100,
        # 2026-12-08, two runs, in turns, dQ bit-equal: 0.625 / 0.625 against 0.644 / 0.640 ms at Wan-1.3B,
        # 10.58 / 10.65 against 10.75 / 11.50 at Wan-14B; with Δ from O_s (not the default) 0.568 / 0.565 against
        # 0.577 / 0.564 and 9.43 / 9.65 against 9.18 / 9.60.
        return BwdConfig(4, 2, 4, 3, qs=32, dq_rows=64, dq_tma=True, dkdv_tma=True, dkdv_register_kv=True,
                         dq_gluon=True, dq_gluon_overlap=True)
    return BwdConfig(warps, 2, warps, 2)


# The CSR key-block lists (key_block_fill.py): key blocks a program takes, query blocks a step.
KEY_TILE = 64
QUERY_TILE = 64
# dk/dv launch order (selection.launch_order): a key block whose list holds at least this many times the mean list
# length (nq·topk/nk) starts ahead of every head's other blocks. Learned attention has key blocks that most query
# blocks select (the testbed model at 97%, scripts/testbed/key_block_popularity.py: up to 30× the mean, 60 of 68
# query blocks); in the head-by-head order a later head's long program started near the grid's end and ran on
# alone. Below the factor heads stay adjacent, so their Q and dO stay in L2. H100, 2026-12-07 (bench_train.py):
# with one key block a head in 75% of the query blocks' selections, dk/dv 1.313 ms against 1.940 head by head at
# Wan-1.3B. Factor 0 (every list longest first across heads) 1.391 against 1.339 on the router's selection at
# Wan-1.3B (an ad-hoc do_bench of run_dkdv, same day): heads interleaved lose L2; factor 2 was no better.
LONG_LIST_FACTOR = 4

# ------------------------------------------------------------------------------------------------ precompute


@dataclass(frozen=True)
class PrecomputeConfig:
    blocks_per_program: int | None = None  # None: enough programs for PRECOMPUTE_PROGRAMS_PER_SM per SM
    # 4 warps, 2 stages: best of the H100 sweep (2026-11-27): 0.223 ms vs 0.238 at 3 stages, 0.360 at 8 warps
    # with 16 blocks a program
    num_warps: int = 4
    num_stages: int = 2
    # h_j (32 KB a key block at D = 128) stored by TMA from shared memory rather than by each thread's stores. Not
    # faster: H100, 2026-12-07, Wan-1.3B, precompute 0.209 against 0.203 ms, with quantisation 0.350 against 0.355.
    tma_store: bool = False
    # quantize_kv_kernel (low bit): one key block a program. H200, 2026-12-05, at the Wan-1.3B shape: precompute
    # with quantisation (bench.py --sweep) 2 / 4 / 8 warps 0.427 / 0.357 / 0.349 ms; the pass alone (do_bench,
    # 302 MB moved) 0.114 ms at 4 warps, 0.106 at 8 (bit-equal), against 0.078 for a copy of the same bytes
    quantize_warps: int = 8


PRECOMPUTE_PROGRAMS_PER_SM = 2  # kv_precompute: programs per SM, each over a run of key blocks (partial Z sums)
Z_GATHER = 16  # complement_kernel: selected blocks' z_j gathered (and mask entries zeroed) per step
COMPLEMENT_COLS = 256  # complement_kernel: mask columns written per step

# ------------------------------------------------------------------------------------------------ router

# pool_sums_kernel: programs per SM along the blocks of a head, each over a run of blocks (its partial sum of K is
# one of the NSPLIT that μ_K is summed from), and its warps. H100, 2026-12-07, bnhd, the kernel's GPU time by
# torch.profiler (Q and K pooled, as the router op runs alone / Q only, with the precompute's state): 2 an SM at 4
# warps 0.133 / 0.052 ms at Wan-1.3B, 0.925 / 0.342 at 14B; 16 at 2 warps 0.079 / 0.041 and 0.552 / 0.262; 8 at 2
# warps 0.088 / 0.039 and 0.675 / 0.262. More programs mean more partials for pooled_project_kernel to add, which
# it once did one at a time (0.020 → 0.105 ms at 1.3B, 16 an SM); now a tile at a time (router_kernels.PARTS_TILE):
# same day, the router's kernels in one call at 1.3B, pool_sums / pooled_project 0.077 / 0.026 ms with K (were
# 0.132 / 0.021), 0.043 / 0.015 without.
ROUTER_POOL_PROGRAMS_PER_SM = 16
ROUTER_POOL_WARPS = 2
ROUTER_PROJECT_ROWS = 32  # pooled blocks projected per program (W[h] is read once per 32 rows)
ROUTER_SCORE_TILE = (64, 64)  # (query blocks, key blocks) of scores per program
# head_dim columns per step of the router's 3xTF32 dots: whole 128-wide fp32 operands (hi and lo parts) spilled
# (255 registers, 118 spills on the H100); 16 columns at a time compile to 150 registers, no spills (sm_90).
ROUTER_DOT_CHUNK = 16

TOPK_MAX_RADIX = 2048  # widest (power-of-two padded) row for topk_kernel; wider rows use torch.topk
# (rows per program, warps) of topk_kernel by padded row width. H100, 2026-11-27: nk = 512: (1, 1) 0.021 ms,
# (4, 4) 0.027, torch 0.10; nk = 1182 (2048 padded): (1, 4) 0.55 ms, (1, 1) 0.69, (4, 4) 1.36, torch.topk + sort
# 1.13. Wider than 2048 was not measured: torch there.
TOPK_LAUNCH: dict = {512: (1, 1), 2048: (1, 4)}
TOPK_DEFAULT_LAUNCH = (1, 4)

# ------------------------------------------------------------------------------------------------ SoftTop-k λ
# soft_topk_lambda_kernel: a row of logits a program, held whole in registers (n padded to a power of two), and
# its warps. H100, 2026-12-05: 0.097 ms for 1,088 rows of 136 (the testbed at batch 8) and 0.356 ms for 3,072 rows
# of 512 (Wan2.1-1.3B), against 7.6 and 8.2 ms for the PyTorch bisection. Rows wider than SOFT_TOPK_MAX_ROW key
# blocks (over 262k tokens at block_k 64) are left to the PyTorch twin (checks.soft_topk_unsupported).
SOFT_TOPK_MAX_ROW = 4096
SOFT_TOPK_WARPS = 4
