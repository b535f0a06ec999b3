import os
import tempfile

import pytest
import torch

# Without CUDA the kernel tests run under Triton's interpreter, which Triton reads when a function is decorated:
# also its own library's (triton.language), decorated when anything first imports Triton. Diffusers' import of
# torch._dynamo does so, so a test module that imports diffusers before sla2_kernels would leave tl.cdiv and friends
# compiled-only and every interpreted kernel failing ("Cannot call @triton.jit'd outside of the scope of a kernel").
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests never reach W&B's servers.
os.environ.setdefault("WANDB_MODE", "disabled")
# Inductor's on-disk cache keys do not cover a custom op's schema: graphs compiled for an earlier `sla2::attention`
# (other outputs) are replayed from the machine's shared cache against today's op. Tests compile into their own.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="sla2-tests-inductor-"))


def pytest_collection_modifyitems(config, items):
    """GPU-marked tests run on a CUDA GPU only; CI and CPU machines skip them with a reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
