"""Elementwise helpers of the low-bit path, exact on the GPU and under Triton's interpreter.

Rounding to the INT8 grid uses the 1.5·2^23 trick (round-half-even, like torch.round) rather than a
libdevice call, whose import path differs between Triton versions and which the interpreter lacks.
FP8 e4m3: on the GPU the hardware conversion (cvt.rn.satfinite) is used; Triton's interpreter (3.9)
rounds fp32 -> e4m3 wrongly when the mantissa carries into the exponent (e.g. 127.9 -> 64), so under
the interpreter values are first rounded in software to the exact e4m3 grid, after which the cast is exact.
"""

import triton
import triton.language as tl

from . import constants

# Module constants are tl.constexpr so that jit functions may read them (Triton rejects plain globals).
INT8_MAX = tl.constexpr(constants.INT8_MAX)
FP8_E4M3_MAX = tl.constexpr(constants.FP8_E4M3_MAX)
LOG2_FP8_E4M3_MAX = tl.constexpr(constants.LOG2_FP8_E4M3_MAX)
MIN_SCALE = tl.constexpr(constants.MIN_SCALE)
LOG2E = tl.constexpr(constants.LOG2E)
LN2 = tl.constexpr(constants.LN2)


@triton.jit
def round_half_even(x):
    """Adding 1.5·2^23 leaves fp32 (23 mantissa bits) no fraction bits, so the add rounds half-to-even.

    fp32 -> nearest integer (ties to even), kept in fp32; valid for |x| < 2^22."""
    return (x + 12582912.0) - 12582912.0


@triton.jit
def divide_rn(x, d):
    """x / d correctly rounded (IEEE, as torch's division on the CPU), d one divisor for the block x or one a
    column (broadcast).

    Triton's `/` is the approximate div.full.f32, which moves near-ties; div_rn per element is a refinement and a
    branch each. Here the reciprocal r = RN(1/d) is taken once, and each element costs a product and two fused
    multiply-adds: q = RN(x·r) is within an ulp of x/d, its remainder x − q·d is exact in an fma, and
    RN(q + (x − q·d)·r) is then the correctly rounded quotient (Markstein's theorem; it needs no underflow, which
    the quantisers' quotients, |x/d| <= 127 or 448 with d >= MIN_SCALE, cannot reach where rounding matters).
    """
    r = tl.math.div_rn(d * 0.0 + 1.0, d)
    q = x * r
    return tl.fma(tl.fma(-q, d, x), r, q)


@triton.jit
def quantize_int8(x, scale):
    """x / scale rounded to the INT8 grid [-127, 127] (the reference's torch.round(x / s).clamp), for one scale a
    block."""
    r = round_half_even(divide_rn(x, scale))
    r = tl.minimum(tl.maximum(r, -INT8_MAX), INT8_MAX)
    return r.to(tl.int8)


@triton.jit
def int8_scale(amax):
    """The INT8 scale of a block whose largest magnitude is amax: amax/127 in IEEE division, as the reference's
    torch division on the CPU (MIN_SCALE keeps an all-zero block finite)."""
    return tl.maximum(tl.math.div_rn(amax, amax * 0.0 + INT8_MAX), MIN_SCALE)


@triton.jit
def int8_block(x):
    """A block x [rows, D] fp32 -> (INT8(x / s), s) with one scale s = max|x|/127 for the whole block: Q per query
    block, smoothed K per key block."""
    s = int8_scale(tl.max(tl.max(tl.abs(x), axis=1), axis=0))
    return quantize_int8(x, s), s


@triton.jit
def round_to_e4m3_grid(x):
    """Round fp32 x (|x| <= ~448) to the nearest e4m3 value (ties to even), saturating at ±448.

    Normal e4m3 keeps 3 of fp32's 23 mantissa bits: round the low 20 bits away on the integer bit
    pattern (a carry moves into the exponent, as it must). Below 2^-6 e4m3 is subnormal with a fixed
    step of 2^-9: round x·2^9 to an integer instead.
    """
    ax = tl.abs(x)
    bits = ax.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576  # -1048576 = ~0xFFFFF
    normal = rounded.to(tl.float32, bitcast=True)
    sub = round_half_even(ax * 512.0) * (1.0 / 512.0)
    r = tl.minimum(tl.where(ax < 0.015625, sub, normal), FP8_E4M3_MAX)
    # Put x's sign bit back with bit operations: Triton's unary minus is 0 − r, which turns −0 into +0
    # (the hardware cast keeps −0; seen on the H100, 2026-11-27).
    sign = x.to(tl.int32, bitcast=True) & -2147483648
    return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def to_e4m3(x, INTERPRET: tl.constexpr, IN_RANGE: tl.constexpr = False):
    """fp32 -> float8e4nv with round-to-nearest-even and saturation at ±448.

    IN_RANGE: the caller guarantees |x| <= 448 (P̃·448 with P̃ <= 1), so the clamp is skipped.
    """
    if INTERPRET:
        x = round_to_e4m3_grid(x)
    elif not IN_RANGE:
        x = tl.minimum(tl.maximum(x, -FP8_E4M3_MAX), FP8_E4M3_MAX)
    return x.to(tl.float8e4nv)
