"""SoftTop-k's threshold λ (docs/method.md, SoftTop-k): the bisection for Σ_j σ(z_j + λ) = k in one launch.

The PyTorch twin (sla2_train.attention.reference.soft_topk.solve_lambda) runs the same float64 bisection as
about 9 operations a step over all rows at once: ~700 small launches a call. Here each program keeps its row's
bracket in registers and runs every step. Host code: soft_topk.py.
"""

import triton
import triton.language as tl


@triton.jit
def soft_topk_lambda_kernel(
    Z,  # float64 [rows, n] logits, contiguous
    LAM,  # float64 [rows] out: λ of each row
    n,
    k,  # float64 target row sum, 1 <= k <= n
    TILE: tl.constexpr,  # columns read at a time (a power of two)
    STEPS: tl.constexpr,  # bisection steps
    MARGIN: tl.constexpr,  # the bracket's ends lie MARGIN beyond −max z and −min z
):
    row = tl.program_id(0).to(tl.int64)
    z_row = Z + row * n
    offs = tl.arange(0, TILE)
    zmax = tl.full([TILE], float("-inf"), tl.float64)
    zmin = tl.full([TILE], float("inf"), tl.float64)
    for start in range(0, n, TILE):
        ok = start + offs < n
        z = tl.load(z_row + start + offs, mask=ok, other=0.0)
        zmax = tl.maximum(zmax, tl.where(ok, z, float("-inf")))
        zmin = tl.minimum(zmin, tl.where(ok, z, float("inf")))
    lo = -tl.max(zmax, axis=0) - MARGIN
    hi = -tl.min(zmin, axis=0) + MARGIN
    for _ in range(STEPS):
        mid = 0.5 * (lo + hi)
        total = mid * 0.0  # a float64 scalar
        for start in range(0, n, TILE):
            ok = start + offs < n
            z = tl.load(z_row + start + offs, mask=ok, other=0.0)
            total += tl.sum(tl.where(ok, 1.0 / (1.0 + tl.exp(-(z + mid))), 0.0), axis=0)
        too_big = total > k
        hi = tl.where(too_big, mid, hi)
        lo = tl.where(too_big, lo, mid)
    tl.store(LAM + row, 0.5 * (lo + hi))
