"""Triton kernels of SLA2 (sparse-linear attention), importable as `sla2_kernels`.

Tensors in, tensors out: no Lightning, no Hydra, no import of sla2_train. The pure-PyTorch twin of every op
is `sla2_train.attention.reference`, the oracle of the tests in tests/kernels/.

Public API (kernels/api.py):
  router(q, k, proj_q, proj_k, *, block_q, block_k, topk, layout, kv_state=None) -> (scores, indices)
  precompute(k, v, *, block_k, layout, quant=False) -> KVState   (optional: shares one K/V pass)
  linear_state(indices, kv_state, *, block_q) -> (H_I, Z_I)      (optional: the linear branch's state)
  sla2_forward(q, k, v, indices, alpha, *, block_q, block_k, quant, layout, kv_state=None, lin_state=None)
      -> (o, lse)
Backward (kernels/sla2_bwd.py) and its autograd glue: `sla2_kernels.autograd`, used by the torch.library ops
of sla2_train.attention.ops.
"""

import os


import torch

# Without CUDA, Triton can only run its interpreter (tests on CPU). It reads TRITON_INTERPRET when a
# kernel is decorated, so it must be set before the kernel modules below are imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .api import KVState, linear_state, precompute, router, sla2_forward  # noqa: E402

__all__ = ["KVState", "linear_state", "precompute", "router", "sla2_forward"]
