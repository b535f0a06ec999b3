"""Tensor-core products that also run correctly under Triton's interpreter.

Triton 3.9's interpreter multiplies bf16 operands as their raw 16-bit patterns (it keeps bf16 as uint16
and calls numpy.matmul on them), so under the interpreter 16-bit operands are widened to fp32 first:
the values are the same bf16/fp16 numbers, products and sums are fp32, as on the tensor cores (up to
summation order). On the GPU the native bf16/fp16 dot (wgmma on Hopper) runs. INT8 and FP8 dots are
exact in the interpreter and are passed through unchanged.
"""

import triton
import triton.language as tl


@triton.jit
def mma(a, b, INTERPRET: tl.constexpr):
    """a @ b with an fp32 result, for 16-bit operands."""
    if INTERPRET:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def mma_acc(a, b, acc, INTERPRET: tl.constexpr):
    """acc + a @ b (fp32 accumulator), for 16-bit operands."""
    if INTERPRET:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)
