"""Wall-clock timing that waits for the GPU: CUDA work is asynchronous, so every clock read synchronises."""

from __future__ import annotations

import time
from typing import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Seconds since start, with the device synchronised at both ends."""

    def __init__(self, device: torch.device | str):
        self.device = device

    def __enter__(self) -> "Clock":
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def time_ms(fn: Callable[[], object], device: torch.device | str, repeats: int = 3) -> float:
    """Mean milliseconds of `fn()` after one warm-up call (autotuning, allocator growth)."""
    fn()
    with Clock(device) as clock:
        for _ in range(repeats):
            fn()
    return clock.seconds * 1000.0 / repeats


class ForwardTimer:
    """Milliseconds of every forward of `module` (pre- and post-forward hooks, synchronised)."""

    def __init__(self, module: torch.nn.Module, device: torch.device | str):
        self.device, self.ms = device, []
        self._handles = [module.register_forward_pre_hook(self._start, prepend=True),
                         module.register_forward_hook(self._stop, prepend=True)]  # before other hooks (probes)

    def _start(self, *_):
        synchronize(self.device)
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        synchronize(self.device)
        self.ms.append((time.perf_counter() - self._t0) * 1000.0)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
