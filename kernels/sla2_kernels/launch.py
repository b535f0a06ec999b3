"""Launching the kernels: output buffers, launch with a smaller-pipeline fallback, and the bookkeeping that the
benchmarks read (the last compiled kernel of each launch site).

Interpreter detection lives here too: without CUDA, Triton runs its interpreter (TRITON_INTERPRET=1, set by the
package's __init__ before any kernel is decorated), and the host code then skips what only a GPU has (SM counts,
TMA hardware) and checks the index lists on the host.
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace

import torch

try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - older layouts of triton
    OutOfResources = RuntimeError

# Every buffer the kernels write is allocated through these two names (called as launch.empty, so that tests can
# patch them to poison each buffer with NaN and check that every element was written).
empty = torch.empty
empty_like = torch.empty_like

# The last compiled kernel of each launch site (registers, spills, shared memory, PTX), for the benchmarks.
LAST_COMPILED: dict = {}

# (launch site, problem key, requested configuration) -> the first configuration that fitted the GPU's resources
_WORKING_CONFIG: dict = {}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def num_sms(device: torch.device) -> int:
    """SMs of the device (1 off CUDA), for grids sized to fill the GPU; asked once per device, not once per call."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


# The host's sizes and grids in plain integer arithmetic: triton.cdiv and triton.next_power_of_2 are constexpr
# functions, whose calls unwrap their arguments (3 µs each on a CPU, against 0.08; twenty-odd calls a forward).
def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The least power of 2 that is >= n (1 for n <= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def run(name: str, kernel, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs), its compiled kernel kept as LAST_COMPILED[name]."""
    LAST_COMPILED[name] = kernel[grid](*args, **kwargs)
    return LAST_COMPILED[name]


def stage_fallbacks(cfg, field: str = "num_stages") -> list:
    """cfg, then the same with one pipeline stage in `field` (less shared memory for the pipelined tiles): the
    configurations a launch tries in turn, forward (FwdConfig) and backward (BwdConfig) alike."""
    return [cfg] if getattr(cfg, field) == 1 else [cfg, replace(cfg, **{field: 1})]


def with_fallback(name: str, kernel, grid, key, cfg, make_args, field: str = "num_stages"):
    """Launch with cfg, or with the first smaller configuration that fits (stage_fallbacks); make_args(c) gives
    (args, kwargs) for configuration c. The configuration that fitted is remembered per (name, key, cfg)."""
    cached = _WORKING_CONFIG.get((name, key, cfg))
    for c in [cached] if cached is not None else stage_fallbacks(cfg, field):
        args, kwargs = make_args(c)
        try:
            run(name, kernel, grid, *args, **kwargs)
        except OutOfResources:
            continue  # e.g. shared memory of the pipelined tiles: try the next, smaller configuration
        _WORKING_CONFIG[(name, key, cfg)] = c
        return c
    raise RuntimeError(f"sla2_kernels: no {name} configuration fits this GPU's resources (from {cfg})")
