"""On CUDA, `auto` falling back to the dense reference says so once per reason (it is O(N²) memory)."""

import types
import warnings

import pytest
import torch

from sla2_train.attention import SLA2Attention, backend


def cuda_like(dtype):
    # backend.choose only reads these attributes of q; a real CUDA tensor is not needed to reach the decision
    return types.SimpleNamespace(is_cuda=True, dtype=dtype, shape=(1, 256, 2, 64), device=torch.device("cuda"))


def test_dense_fallback_on_cuda_warns_once_per_reason(monkeypatch):
    monkeypatch.setattr(backend, "_warned_fallbacks", set())
    attn = SLA2Attention(2, 64, block_q=64, block_k=64)
    with pytest.warns(UserWarning, match=r"dense PyTorch reference on CUDA because dtype torch.float32"):
        assert backend.choose(attn, cuda_like(torch.float32)) == backend.REFERENCE
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.choose(attn, cuda_like(torch.float32)) == backend.REFERENCE  # same reason: silent


def test_cpu_takes_the_op_path_without_warning():
    attn = SLA2Attention(2, 64, block_q=64, block_k=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.choose(attn, torch.randn(1, 256, 2, 64)) == backend.OPS
