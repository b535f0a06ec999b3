"""Which implementation computes an SLA2Attention call, decided here once per call, and the op path's run.

  ops (CUDA)       the custom ops of ops.py, whose CUDA implementation is the Triton kernels of sla2_kernels
                   (router, forward, backward): hard Top-k SLA2 where the kernels cover the call;
  ops (CPU)        the same ops, whose CPU implementation is the reference (reference/indexed.py,
                   reference/backward.py): CPU runs, tests and torch.compile exercise the graph the GPU runs;
  reference        SLA2Attention's plain reference path (dense, autograd through PyTorch): SoftTop-k, the SLA
                   and full variants, backend="reference", and CUDA calls the kernels do not cover (fp32, head_dim
                   96, ...), with a warning once per reason, since it needs O(N²) memory.

On CUDA an eager call (no torch.compile tracing, no dispatch mode such as selective activation checkpointing or
fake tensors, plain tensors) runs the ops' kernels without the dispatcher (direct.py: the same kernels and autograd
formula, less host time); op_path decides.

SoftTop-k's threshold λ (stage 1's loss, the SoftTop-k forward) is solved by the op `sla2::soft_topk_lambda` (one
kernel launch on CUDA, the reference bisection on CPU) unless backend="reference", the kernels cannot be
imported or a row is wider than the kernel takes; lambda_solver decides.

backend="auto" takes the ops where the kernels cover the call and on CPU; "reference" never takes them;
"triton" insists on the kernels for hard Top-k SLA2 and raises when they cannot run.
With quant=True the ops give QAT's straight-through gradient (the bf16 backward at the low-bit forward's o and
lse) on CPU and CUDA alike; the reference path gives the exact gradient of the bf16 forward.
"""

from __future__ import annotations

import importlib
import warnings

import torch
from sla2_kernels import tuning as kernel_tuning
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import direct
from . import ops  # noqa: F401  (registers torch.ops.sla2.*)
from . import reference as ref
from .checks import check_attention_args, check_router_args
from .reference.soft_topk import LambdaSolver

OPS, REFERENCE = "ops", "reference"


def _load_kernels():
    """sla2_kernels' coverage tests (attention, SoftTop-k's λ), or Nones and why the kernels cannot be imported (no
    triton: a CPU install)."""
    try:
        importlib.import_module("sla2_kernels.backward")  # the forward and the backward, as the ops run them
        importlib.import_module("sla2_kernels.soft_topk")
        from sla2_kernels import soft_topk_unsupported, unsupported
    except Exception as err:
        return None, None, f"sla2_kernels cannot be imported ({err})"
    return unsupported, soft_topk_unsupported, ""


_unsupported, _soft_topk_unsupported, _import_error = _load_kernels()
_warned_fallbacks: set[str] = set()


def kernels_missing(q: torch.Tensor, block_q: int, block_k: int) -> str:
    """Why the Triton kernels cannot compute this call ("" when they can)."""
    if _unsupported is None:
        return _import_error
    if not q.is_cuda:
        return "inputs are not on a CUDA device"
    return _unsupported(q.dtype, q.shape[-1], block_q, block_k)


def choose(attn, q: torch.Tensor) -> str:
    """OPS or REFERENCE for this call of `attn` (an SLA2Attention); owns the fallback warning."""
    if attn.variant != "sla2" or attn.topk != "hard" or attn.backend == "reference":
        return REFERENCE
    why = kernels_missing(q, attn.block_q, attn.block_k)
    if attn.backend == "triton" and why:
        raise RuntimeError(f"backend='triton' cannot run: {why}")
    if not why or q.device.type == "cpu":
        return OPS
    if q.is_cuda and why not in _warned_fallbacks:
        # The module's reference path is dense, O(N²) memory: at Wan lengths the next thing is usually an OOM.
        _warned_fallbacks.add(why)
        warnings.warn(f"SLA2Attention runs its dense PyTorch reference on CUDA because {why}; "
                      "backend='triton' makes this an error", stacklevel=3)
    return REFERENCE


def lambda_kernel_missing(num_key_blocks: int) -> str:
    """Why SoftTop-k's λ kernel cannot take rows of this many key blocks ("" when it can)."""
    if _soft_topk_unsupported is None:
        return _import_error
    return _soft_topk_unsupported(num_key_blocks)


def lambda_solver(attn, scores: torch.Tensor) -> LambdaSolver:
    """SoftTop-k's λ solve for this call of `attn` (an SLA2Attention) on these router scores [..., n_k]: the op
    (the kernel on CUDA, the twin on CPU), or the twin itself where the kernel cannot run. Both give the same λ."""
    if attn.backend == "reference" or (scores.is_cuda and lambda_kernel_missing(scores.shape[-1])):
        return ref.solve_lambda
    return torch.ops.sla2.soft_topk_lambda


def unobserved(q: torch.Tensor) -> bool:
    """Whether nothing needs to see this call's ops: a plain tensor (no subclass such as a fake tensor), no
    torch.compile tracing, no dispatch mode (selective activation checkpointing keeps the ops' outputs through one)."""
    return type(q) is torch.Tensor and not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None


def op_path(q: torch.Tensor):
    """The (router, attention) functions that run this call on the op path: direct.py's for an eager call on CUDA
    that nothing observes, the torch.ops otherwise."""
    if q.is_cuda and unobserved(q):
        return direct.router, direct.attention
    return torch.ops.sla2.router, torch.ops.sla2.attention


def run_ops(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str) -> torch.Tensor:
    """Hard Top-k SLA2 of `attn` through the ops: router (or the best-mass oracle, or the base model's blocks), α,
    attention (inputs already validated by attn)."""
    n = q.shape[1] if layout == "bnhd" else q.shape[2]
    k_sel = ref.topk_count(ref.num_blocks(n, attn.block_k), attn.sparsity)
    router, attention = op_path(q)
    mass = None
    if attn.selection == "bestmass":
        chosen, kept = attn.bestmass(ref.indexed.bhnd(q, layout), ref.indexed.bhnd(k, layout), k_sel)
        indices = chosen.indices.to(torch.int32)
        attn.alpha.check_length(indices.shape[-2])
        mass = kept if attn.alpha.needs_mass else None
    else:
        if attn.selection == "base":
            indices = attn.given_indices(q.shape[0], ref.num_blocks(n, attn.block_q), k_sel).to(torch.int32)
            scores = _router(router, attn, q, k, k_sel, layout)[0] if attn.alpha.needs_mass else None
        else:
            scores, indices = _router(router, attn, q, k, k_sel, layout)
        attn.alpha.check_length(indices.shape[-2])
        if attn.alpha.needs_mass:
            mask = ref.indexed.index_mask(indices, scores.shape[-1])
            mass = ref.selected_mass(scores, mask, ref.block_token_counts(n, attn.block_k, q.device))
    alpha = alpha_dtype(attn.alpha(mass))  # the op forces α = 1 when k_sel == nk (reference.effective_alpha)
    return attention(q, k, v, indices, alpha, attn.block_q, attn.block_k, attn.quant, layout,
                     keeps_sparse_output(attn.quant, alpha, q, k, v))[0]


def _router(router, attn, q: torch.Tensor, k: torch.Tensor, k_sel: int, layout: str):
    """(scores, indices) of attn's router by `router` (op_path's). Hard Top-k has no gradient: the router runs on
    detached inputs (it is trained through SoftTop-k only)."""
    return router(q.detach(), k.detach(), attn.router.proj_q.detach(), attn.router.proj_k.detach(),
                  attn.block_q, attn.block_k, k_sel, layout)


def router_blocks(attn, q: torch.Tensor, k: torch.Tensor, layout: str = "bnhd") -> torch.Tensor:
    """int32 [B, H, nq, k] of `attn`'s router's hard Top-k on q, k, where attn would compute it: the router op when
    the ops take the call, the reference router otherwise (on CUDA, shapes the kernels do not cover)."""
    n = q.shape[1] if layout == "bnhd" else q.shape[2]
    k_sel = ref.topk_count(ref.num_blocks(n, attn.block_k), attn.sparsity)
    if choose(attn, q) == OPS:
        return _router(op_path(q)[0], attn, q, k, k_sel, layout)[1]
    scores = attn._scores(ref.indexed.bhnd(q, layout), ref.indexed.bhnd(k, layout))
    return ref.hard_topk(scores.detach(), k_sel).indices.to(torch.int32)


def keeps_sparse_output(quant: bool, alpha: torch.Tensor, *inputs: torch.Tensor) -> bool:
    """Whether the forward also returns its sparse output (the op's sparse_out, a tensor the size of o kept for the
    backward). Low-bit: O_s^q, which only QAT's dα reads (ops.py), so only where a gradient reaches α. bf16: O_s,
    from which the CUDA backward knows Δ before its dq loop, where any gradient is to come and
    sla2_kernels.tuning.BF16_SPARSE_OUTPUT (the measured trade of speed for memory) says so."""
    if not (torch.is_grad_enabled() and kernel_tuning.training_keeps_sparse_output(quant)):
        return False  # inference, and bf16 training while BF16_SPARSE_OUTPUT is off: no scan of the inputs
    return alpha.requires_grad if quant else any(t.requires_grad for t in (alpha, *inputs))


def alpha_dtype(alpha: torch.Tensor) -> torch.Tensor:
    """alpha in at least fp32 (float64 stays float64: rounding it would put the reference path, and gradcheck
    in float64, off by fp32's rounding)."""
    return alpha.to(ref.indexed.acc_dtype(alpha.dtype))


def sla2_attention(q, k, v, indices, alpha, *, block_q: int, block_k: int, quant: bool = False, layout: str = "bnhd"):
    """Differentiable SLA2 through the custom op, for a direct call (benchmarks, tests): validates, then returns o
    (q's layout). alpha: a float or a tensor broadcastable to [B, H, nq], taken in at least fp32."""
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.tensor(float(alpha), device=q.device)
    check_attention_args(q, k, v, indices, alpha, block_q, block_k, layout)
    alpha = alpha_dtype(alpha)
    return op_path(q)[1](q, k, v, indices, alpha, block_q, block_k, quant, layout,
                         keeps_sparse_output(quant, alpha, q, k, v))[0]


def block_router(q, k, proj_q, proj_k, *, block_q: int, block_k: int, topk: int, layout: str = "bnhd"):
    """(scores, indices) of the router op, for a direct call: validates, then runs it (op_path)."""
    check_router_args(q, k, proj_q, proj_k, block_q, block_k, topk, layout)
    return op_path(q)[0](q, k, proj_q, proj_k, block_q, block_k, topk, layout)
