import os
import tempfile

import pytest
import torch

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
