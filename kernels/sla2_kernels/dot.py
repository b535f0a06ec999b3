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


@triton.jit
def register_operand(x, INTERPRET: tl.constexpr):
    """x (16-bit), unchanged, as a tensor the compiler cannot trace back to its load. Triton feeds a wgmma's first
    operand from shared memory when it comes straight from a load, and from registers otherwise; an identity move
    in inline PTX (two 16-bit values a 32-bit register) makes a loop-invariant tile a register operand, converted
    once before the loop. The interpreter runs no PTX: there x itself."""
    if INTERPRET:
        return x
    else:
        return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=x.dtype, is_pure=True, pack=2)
