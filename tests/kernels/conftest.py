"""Kernel tests: on a machine without CUDA the Triton kernels run under Triton's interpreter (tests/conftest.py
sets TRITON_INTERPRET before anything imports Triton)."""

import pytest
import torch

from sla2_kernels import launch

INT8_POISON = -128  # never produced: quantisation clamps to [-127, 127]
FP8_NAN_BITS = 0x7F  # e4m3fn NaN


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.float8_e4m3fn:
        t.view(torch.uint8).fill_(FP8_NAN_BITS)
    elif t.dtype.is_floating_point:
        t.fill_(float("nan"))
    else:
        t.fill_(INT8_POISON if t.dtype == torch.int8 else -(2**30))
    return t


def unwritten(t: torch.Tensor) -> int:
    """Number of elements still holding the poison value."""
    if t.dtype == torch.float8_e4m3fn:
        return int((t.view(torch.uint8) & 0x7F == FP8_NAN_BITS).sum())
    if t.dtype.is_floating_point:
        return int(torch.isnan(t).sum())
    return int((t == (INT8_POISON if t.dtype == torch.int8 else -(2**30))).sum())


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer sla2_kernels allocates starts as NaN (or a sentinel); returns the list of them."""
    allocated = []

    def empty(*args, **kwargs):
        t = _poison(torch.empty(*args, **kwargs))
        allocated.append(t)
        return t

    def empty_like(*args, **kwargs):
        t = _poison(torch.empty_like(*args, **kwargs))
        allocated.append(t)
        return t

    monkeypatch.setattr(launch, "empty", empty)
    monkeypatch.setattr(launch, "empty_like", empty_like)
    return allocated


@pytest.fixture
def kernel_ops():
    """The custom ops of sla2_train.attention.ops with their CUDA implementation (the kernels) on CPU tensors,
    here under Triton's interpreter: the path training takes on the GPU, autograd formula included."""
    from sla2_train.attention import ops

    table = [(ops.router, ops.router_kernels, ops.router_reference),
             (ops.attention, ops.attention_kernels, ops.attention_reference),
             (ops.attention_backward, ops.backward_kernels, ops.backward_reference)]
    for op, kernels, _ in table:
        op.register_kernel("cpu", kernels)
    yield
    for op, _, reference in table:
        op.register_kernel("cpu", reference)


def assert_all_written(buffers):
    for t in buffers:
        n = unwritten(t)
        assert n == 0, f"{n} of {t.numel()} elements of a {tuple(t.shape)} {t.dtype} buffer unwritten"


def make_qkv(B, H, N, D, dtype, layout, strided=False, device="cpu", seed=None):
    """Fresh random q, k, v in the given layout and their fp32 [B, H, N, D] views for the reference.

    K has a per-channel offset (what smoothing removes) and V a non-zero mean, like real activations.
    strided=True returns views into one fused buffer (as a fused QKV projection gives), not contiguous.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(torch.seed() if seed is None else seed)
    base = torch.randn(3, B, H, N, D, generator=gen)
    base[1] += 0.5 * torch.randn(1, H, 1, D, generator=gen)
    base[2] += 0.3 * torch.randn(1, H, 1, D, generator=gen)
    if layout == "bnhd":
        if strided:
            store = base.permute(1, 3, 0, 2, 4).contiguous().to(device=device, dtype=dtype)  # [B, N, 3, H, D]
            q, k, v = store[:, :, 0], store[:, :, 1], store[:, :, 2]
        else:
            q, k, v = (base[i].transpose(1, 2).contiguous().to(device=device, dtype=dtype) for i in range(3))
        ref = [t.transpose(1, 2).float() for t in (q, k, v)]
    else:
        if strided:
            store = torch.cat([base[0], base[1], base[2]], dim=-1).to(device=device, dtype=dtype)  # [B, H, N, 3D]
            q, k, v = store[..., :D], store[..., D : 2 * D], store[..., 2 * D :]
        else:
            q, k, v = (base[i].contiguous().to(device=device, dtype=dtype) for i in range(3))
        ref = [t.float() for t in (q, k, v)]
    return (q, k, v), ref


def random_selection(B, H, N, bq, bk, topk, seed):
    """A random hard Top-k block selection and α in (0.1, 0.9) per query block."""
    from sla2_train.attention import reference as ref

    g = torch.Generator().manual_seed(seed)
    nq, nk = -(-N // bq), -(-N // bk)
    sel = ref.hard_topk(torch.rand(B, H, nq, nk, generator=g), topk)
    return sel, 0.1 + 0.8 * torch.rand(B, H, nq, generator=g)


def rel_l1(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).abs().sum() / ref.abs().sum())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))


def to_bhnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if layout == "bnhd" else x


@pytest.fixture
def kt():
    """Helpers shared by the kernel tests (test modules cannot import conftest under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        make_qkv=make_qkv, random_selection=random_selection, rel_l1=rel_l1, cosine=cosine, to_bhnd=to_bhnd,
        assert_all_written=assert_all_written, unwritten=unwritten,
    )
