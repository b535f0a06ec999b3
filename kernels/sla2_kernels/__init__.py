"""Triton kernels of SLA2 (sparse-linear attention), importable as `sla2_kernels`.

Tensors in, tensors out: no Lightning, no Hydra, no import of sla2_train. The pure-PyTorch twin of every op is
`sla2_train.attention.reference`, the oracle of the tests in tests/kernels/. The method as implemented:
docs/method.md.

Public API (each name importable from the package root):
  router(q, k, proj_q, proj_k, *, block_q, block_k, topk, layout, kv_state=None) -> (scores, indices)
  precompute(k, v, *, block_k, layout, quant=False, config=None) -> KVState  (optional: shares one K/V pass)
  linear_state(indices, kv_state, *, block_q) -> (H_I, Z_I)               (optional: the linear branch's state)
  sla2_forward(q, k, v, indices, alpha, *, block_q, block_k, quant, layout, kv_state=None, lin_state=None,
               config=None, sparse_out=True) -> (o, lse, o_s)   (o_s: the sparse branch's output, else empty)
  sla2_backward(do, q, k, v, o, lse, indices, alpha, *, block_q, block_k, layout, o_s=None, quant=None,
                config=None) -> (dq, dk, dv, dalpha)
      (rebuilds its fp32 linear state; o_s with quant=True: QAT's exact dα; with quant=False: Δ before the dq loop)
  soft_topk_lambda(z, k) -> λ [..., 1] float64     (SoftTop-k's threshold: Σ_j σ(z_j + λ) = k on each row)
  soft_topk_unsupported(n) -> str                   ("" when soft_topk_lambda takes rows of n key blocks)
  unsupported(dtype, head_dim, block_q, block_k) -> str   ("" when the kernels cover these options)
  KVState, FwdConfig, BwdConfig, PrecomputeConfig          (launch configurations: tuning.py)
Autograd is not here: sla2_train.attention.ops registers sla2_forward and sla2_backward as the
torch.library op `sla2::attention` (and soft_topk_lambda as `sla2::soft_topk_lambda`).

Layout of the package. @triton.jit code only: router_kernels.py, linear_precompute.py, lowbit_quant.py,
complement.py, key_block_fill.py, soft_topk_kernels.py, sla2_fwd.py, sla2_fwd_tma.py, sla2_fwd_lowbit.py,
sla2_bwd.py, sla2_bwd_tma.py and their helpers dot.py, quant_math.py, bwd_math.py. Host code, one job a file:
routing.py (router, Top-k), kv_state.py (the one pass over K, V), forward.py, backward.py, backward_state.py (the
backward's fp32 linear state), selection.py (complement mask, key-block lists), soft_topk.py (SoftTop-k's λ),
layouts.py (strides, TMA descriptors), checks.py (input validation, what the kernels cover), launch.py (buffers,
launch with fallback, interpreter detection), tuning.py (configurations and their measurements), constants.py
(the low-bit and SoftTop-k constants). blocked_reference.py is a blocked PyTorch oracle for real sizes.

The public names load on first use, so that `sla2_kernels.constants` (and the blocked reference) import without
triton.
"""

import importlib
import os

import torch

# Without CUDA, Triton can only run its interpreter (tests on CPU). It reads TRITON_INTERPRET when a
# function is decorated: ours, imported after this line, and triton.language's own, decorated when Triton is first
# imported. A process that imported Triton before this (torch._dynamo does) must set it itself, as the tests do.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_HOMES = {
    "router": "routing",
    "precompute": "kv_state",
    "KVState": "kv_state",
    "linear_state": "forward",
    "sla2_forward": "forward",
    "sla2_backward": "backward",
    "soft_topk_lambda": "soft_topk",
    "soft_topk_unsupported": "checks",
    "unsupported": "checks",
    "FwdConfig": "tuning",
    "BwdConfig": "tuning",
    "PrecomputeConfig": "tuning",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
