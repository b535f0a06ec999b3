"""The low-bit arithmetic's and SoftTop-k's constants, defined once for the kernels, their host code and the
PyTorch references.

Plain Python numbers: this module imports neither torch nor triton, so the reference
(sla2_train.attention.reference) reads them on an install without triton. The @triton.jit files take them as
tl.constexpr through quant_math.py.
"""

INT8_MAX = 127.0  # the INT8 grid is symmetric, [-127, 127]: -128 is never produced
FP8_E4M3_MAX = 448.0  # largest finite float8 e4m3fn value: P̃ and V̂ are scaled to it
LOG2_FP8_E4M3_MAX = 8.807354922057604  # log2(448): the kernels fold P̃'s scale into its exp2
MIN_SCALE = 1e-12  # an all-zero block keeps a positive scale, so dequantisation never divides by zero
LOG2E = 1.4426950408889634  # the kernels' softmax runs in the exp2 domain
LN2 = 0.6931471805599453

# SoftTop-k's threshold λ (docs/method.md, SoftTop-k), found by bisection in float64 by the kernel and its twin
BISECTION_STEPS = 80  # halves the λ bracket to < 1e-20 of its width: exact in float64
BRACKET_MARGIN = 40.0  # σ(±40) is within 4e-18 of 0/1, so the bracket ends straddle any 1 <= k < n
