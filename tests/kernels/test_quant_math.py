"""The low-bit path's division (quant_math.divide_rn: one reciprocal a divisor, then a product and two fused
multiply-adds an element) against IEEE division, where a quotient's last bit decides the INT8 or e4m3 value: at
and beside the rounding ties of the INT8 grid, over the range of quotients the quantisers produce, with one
divisor a block and one a column. Under the interpreter without CUDA, compiled on the GPU (the `gpu` case), where
Triton's own `/` would not be IEEE.
"""

import pytest
import torch
import triton
import triton.language as tl

from sla2_kernels.constants import MIN_SCALE
from sla2_kernels.quant_math import divide_rn, int8_scale


@triton.jit
def _divide_kernel(X, DIV, OUT, SCALE_OUT, COLUMNS: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    offs = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    x = tl.load(X + offs)
    if COLUMNS:
        d = tl.load(DIV + tl.arange(0, C))[None, :]
    else:
        d = tl.load(DIV)
    tl.store(OUT + offs, divide_rn(x, d))
    tl.store(SCALE_OUT + tl.arange(0, C), int8_scale(tl.abs(tl.load(X + tl.arange(0, C)))))  # maxima


def _near_ties(g: torch.Generator, rows: int, cols: int, d: torch.Tensor) -> torch.Tensor:
    """x whose quotient by d lies within a few ulps of a half-integer in [-127, 127] (the INT8 grid's ties) or is
    random in that range; d broadcasts to [rows, cols]."""
    n = torch.randint(-127, 127, (rows, cols), generator=g).double() + 0.5
    x = (n * d.double()).float()  # the tie's nearest fp32, then up to 3 ulps either way
    for _ in range(3):
        step = torch.randint(-1, 2, (rows, cols), generator=g)
        x = torch.where(step > 0, torch.nextafter(x, torch.tensor(float("inf"))),
                        torch.where(step < 0, torch.nextafter(x, torch.tensor(float("-inf"))), x))
    rand = (torch.rand(rows, cols, generator=g) * 254 - 127) * d
    return torch.where(torch.rand(rows, cols, generator=g) < 0.75, x, rand.float())


@pytest.mark.parametrize("columns", [False, True], ids=["block-divisor", "column-divisors"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_divide_rn_is_ieee_division(columns, seed, device):
    if device == "cpu" and torch.cuda.is_available():
        pytest.skip("with CUDA the kernels are compiled, not interpreted: the cuda case runs")
    g = torch.Generator().manual_seed(seed)
    R, C = 64, 128
    # divisors over many binades, as the scales of Q, K (max/127) and V (max/448) are
    n = C if columns else 1
    d = torch.exp2(torch.empty(n).uniform_(-20, 10, generator=g)) * (1 + torch.rand(n, generator=g))
    x = _near_ties(g, R, C, d if columns else d[0])
    x[0, 0] = 0.0  # an all-zero block's scale is MIN_SCALE
    out, scales = torch.empty_like(x), torch.empty(C)
    dev = [t.to(device) for t in (x, d, out, scales)]
    _divide_kernel[(1,)](*dev, COLUMNS=columns, R=R, C=C)
    out, scales = dev[2].cpu(), dev[3].cpu()
    want = x / (d[None, :] if columns else d[0])  # IEEE on the CPU
    assert torch.equal(out, want), f"{int((out != want).sum())} of {out.numel()} quotients differ from IEEE division"
    # the INT8 scale of a block whose largest magnitude is m: m/127 in IEEE division, at least MIN_SCALE
    assert torch.equal(scales, torch.clamp(x[0].abs() / 127, min=MIN_SCALE))
