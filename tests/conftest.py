import os

import pytest
import torch

# Tests never reach W&B's servers.
os.environ.setdefault("WANDB_MODE", "disabled")


def pytest_collection_modifyitems(config, items):
    """GPU-marked tests run on the H100 only; CI and CPU machines skip them with a reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
