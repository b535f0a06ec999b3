"""SoftTop-k's threshold λ (docs/method.md, SoftTop-k): the bisection for Σ_j σ(z_j + λ) = k in one launch.

The PyTorch twin (sla2_train.attention.reference.soft_topk.solve_lambda) runs the same float64 bisection as
about 9 operations a step over all rows at once: ~700 small launches a call. Here each program holds its row in
registers and runs every step on it. Host code: soft_topk.py.
"""

import triton
import triton.language as tl


@triton.jit
def soft_topk_lambda_kernel(
    Z,  # float64 [rows, n] logits, contiguous
    LAM,  # float64 [rows] out: λ of each row
    n,
    k,  # float64 target row sum, 1 <= k <= n
    NP: tl.constexpr,  # n padded to a power of two: the whole row in one program
    STEPS: tl.constexpr,  # bisection steps
    MARGIN: tl.constexpr,  # the bracket's ends lie MARGIN beyond −max z and −min z
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, NP)
    ok = offs < n
    z = tl.load(Z + row * n + offs, mask=ok, other=0.0)
    lo = -tl.max(tl.where(ok, z, -float("inf")), axis=0) - MARGIN
    hi = -tl.min(tl.where(ok, z, float("inf")), axis=0) + MARGIN
    for _ in range(STEPS):
        mid = 0.5 * (lo + hi)
        total = tl.sum(tl.where(ok, 1.0 / (1.0 + tl.exp(-(z + mid))), 0.0), axis=0)
        too_big = total > k
        hi = tl.where(too_big, mid, hi)
        lo = tl.where(too_big, lo, mid)
    tl.store(LAM + row, 0.5 * (lo + hi))
