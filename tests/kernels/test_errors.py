"""Inputs the kernels do not cover raise one clear ValueError line before any launch."""

import pytest
import torch

import sla2_kernels

B, H, N, D = 1, 2, 130, 64


def _qkv(dtype=torch.bfloat16, d=D, layout="bhnd"):
    shape = (B, H, N, d) if layout == "bhnd" else (B, N, H, d)
    return [torch.randn(shape).to(dtype) for _ in range(3)]


def _fwd(q, k, v, indices=None, alpha=0.5, **kw):
    opts = dict(block_q=64, block_k=64, quant=False, layout="bhnd")
    opts.update(kw)
    if indices is None:
        indices = torch.zeros(B, H, 3, 1, dtype=torch.int32)
    return sla2_kernels.sla2_forward(q, k, v, indices, alpha, **opts)


def _bwd_with(o_s, quant=True):
    """The backward after a bf16 forward, given an o_s (the forward's sparse output) that does not fit it."""
    q, k, v = _qkv()
    indices = torch.zeros(B, H, 3, 1, dtype=torch.int32)
    o, lse, _ = _fwd(q, k, v, indices)
    return sla2_kernels.sla2_backward(torch.randn_like(o), q, k, v, o, lse, indices, 0.5, block_q=64, block_k=64,
                                      layout="bhnd", o_s=o_s, quant=quant)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: _fwd(*_qkv(torch.float32)), "dtype torch.float32 is not supported"),
        (lambda: _fwd(*_qkv(d=32)), "head_dim 32 is not supported"),
        (lambda: _fwd(*_qkv(), block_q=32), "block_q must be one of"),
        (lambda: _fwd(*_qkv(), block_k=256), "block_k must be one of"),
        (lambda: _fwd(*_qkv(), layout="bshd"), "layout must be one of"),
        (lambda: _fwd(*_qkv()[:2], _qkv()[2][:, :, :-1]), "shapes differ"),
        (lambda: _fwd(*_qkv()[:2], _qkv(torch.float16)[2]), "dtypes differ"),
        (lambda: _fwd(*_qkv(), indices=torch.zeros(B, H, 2, 1, dtype=torch.int32)), "indices must be"),
        (lambda: _fwd(*_qkv(), indices=torch.zeros(B, H, 3, 1)), "indices must be int32/int64"),
        (lambda: _fwd(*_qkv(), indices=torch.zeros(B, H, 3, 4, dtype=torch.int32)), "must be in \\[1, 3\\]"),
        (lambda: _fwd(*_qkv(), alpha=torch.full((3, 3), 0.5)), "alpha of shape"),
        (lambda: _fwd(torch.randn(B, H, N), *_qkv()[1:]), "q must be a 4-D tensor"),
        (
            lambda: _fwd(*_qkv(), quant=True, kv_state=sla2_kernels.precompute(*_qkv()[1:], block_k=64, layout="bhnd")),
            "built with quant=False",
        ),
        (
            lambda: _fwd(*_qkv(), kv_state=sla2_kernels.precompute(*_qkv()[1:], block_k=128, layout="bhnd")),
            "kv_state was built for block_k=128",
        ),
        (
            lambda: _fwd(*_qkv(), lin_state=(torch.zeros(B * H, 3, D, D), torch.zeros(B * H, 3, D))),
            "lin_state must be",
        ),
        (lambda: _fwd(*_qkv(), indices=torch.full((B, H, 3, 1), 3, dtype=torch.int32)), "must lie in \\[0, 3\\)"),
        (lambda: _fwd(*_qkv(), indices=torch.zeros(B, H, 3, 2, dtype=torch.int32)), "repeat a key block"),
        (
            lambda: _fwd(*_qkv(), indices=torch.tensor([2, 0], dtype=torch.int32).expand(B, H, 3, 2)),
            "must be ascending",
        ),
        (lambda: _bwd_with(torch.empty(0, dtype=torch.bfloat16)),
         "o_s must be sla2_forward\\(..., sparse_out=True\\)'s"),
        (lambda: _bwd_with(torch.zeros(B, H, N, D, dtype=torch.bfloat16), quant=None), "o_s needs quant=True"),
        (lambda: _bwd_with(torch.zeros(B, H, N, D, dtype=torch.float16)), "got torch.float16"),
        (
            lambda: sla2_kernels.router(*_qkv()[:2], torch.eye(D).expand(H, D, D), torch.eye(D), block_q=64,
                                        block_k=64, topk=1, layout="bhnd"),
            "proj_k must be \\[H, D, D\\]",
        ),
        (
            lambda: sla2_kernels.router(*_qkv()[:2], torch.eye(D).expand(H, D, D), torch.eye(D).expand(H, D, D),
                                        block_q=64, block_k=64, topk=4, layout="bhnd"),
            "topk must be an int in \\[1, 3\\]",
        ),
    ],
)
def test_bad_input_raises_one_clear_line(make, match):
    with pytest.raises(ValueError, match=match) as info:
        make()
    assert "\n" not in str(info.value) and str(info.value).startswith("sla2_kernels: ")
