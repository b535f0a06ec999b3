"""Sums over the middle axis of small fp32 tensors, [R, S, D] -> [R, D] × scale: the per-head totals the forward
and backward need from per-block (or per-program) rows: μ_K from the key blocks' column sums, Z_tot from the
precompute's partial sums, dZ_tot from the query blocks' dZ_I.

torch's sum over the middle axis ran these as one program per row of R: 20 µs for [12, 512, 128] (μ_K), 8 µs
for [12, 22, 128] (Z_tot) and 13 µs for [12, 256, 128] (dZ_tot) at the Wan-1.3B shape (H100, ncu, 2026-11-27);
here (row, DT columns) programs sum ST rows a step.
"""

import triton
import triton.language as tl


@triton.jit
def sum_partials_kernel(
    X, OUT,  # X fp32 [R, S, D] contiguous; OUT fp32 [R, D]
    S, scale,
    D: tl.constexpr, DT: tl.constexpr, ST: tl.constexpr,  # DT columns a program, ST rows a step
):
    r = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * DT + tl.arange(0, DT)
    acc = tl.zeros([ST, DT], dtype=tl.float32)
    for s0 in range(0, S, ST):
        rows = s0 + tl.arange(0, ST)
        acc += tl.load(X + (r * S + rows[:, None]) * D + cols[None, :], mask=(rows < S)[:, None], other=0.0)
    tl.store(OUT + r * D + cols, tl.sum(acc, axis=0) * scale)
