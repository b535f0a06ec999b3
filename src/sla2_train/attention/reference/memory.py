"""Refuse a dense O(N²) reference call that cannot fit, with one line, instead of allocating until killed.

The reference forms [B, H, N, N] score matrices: at Wan2.1-1.3B's 480p length (N = 32,760, 12 heads) one
float32 matrix is 51.5 GB, so a CPU run of the real model dies in the allocator or the kernel's OOM killer
without a word. The estimate is a lower bound (two such matrices: the scores and their softmax), so a call
refused here could not have run.
"""

from __future__ import annotations

import os

import torch

DENSE_MATRICES = 2  # the scores and their softmax are both alive at the peak of every dense path


class DenseTooLarge(MemoryError):
    """A dense reference call whose [B, H, N, N] intermediates exceed the memory left on its device."""


def dense_bytes(batch: int, heads: int, n_q: int, n_k: int, itemsize: int) -> int:
    """Lower bound of the bytes a dense reference attention over [B, H, n_q, n_k] scores holds at its peak."""
    return DENSE_MATRICES * batch * heads * n_q * n_k * itemsize


def available_bytes(device: torch.device) -> int:
    """Free memory on `device`: the CUDA allocator's view for a GPU, MemAvailable for the host."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def check_dense_fits(q: torch.Tensor, k: torch.Tensor) -> None:
    """DenseTooLarge when the dense path over q [B, H, Nq, D], k [B, H, Nk, D] cannot fit where q lives."""
    if torch.compiler.is_compiling():
        return  # traced graphs are checked when they run eagerly first; a file read does not trace
    b, h, n_q, _ = q.shape
    need = dense_bytes(b, h, n_q, k.shape[-2], q.element_size())
    if need <= 2**30:  # small calls never pay for the look-up
        return
    free = available_bytes(q.device)
    if need > free:
        raise DenseTooLarge(
            f"dense reference attention at N={n_q:,} query and {k.shape[-2]:,} key tokens (B {b}, H {h}, {q.dtype}) needs at least "
            f"{gigabytes(need)} for its N×N scores, but {q.device.type} has {gigabytes(free)} available; "
            "run on a GPU (trainer=gpu: the Triton kernels never form the N×N matrix) or use a shorter sequence"
        )
