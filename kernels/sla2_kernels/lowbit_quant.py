"""Quantise K and V once per key block for the low-bit sparse branch (docs/method.md, Low-bit sparse branch and QAT).

K: smoothed (K − μ, μ = per-head token mean), INT8 with one scale per key block, s_k = max|K_j − μ|/127.
V: FP8 e4m3 with one scale per (head, channel) over all tokens, s_v = max|V[:, c]|/448, stored
   TRANSPOSED [BH, D, nk·b_k]: Hopper's 8-bit wgmma needs the B operand K-major (the key axis
   contiguous), as in Triton's own FP8 attention tutorial.
Padded rows of the ragged last block are written as 0. Each key block is selected by several query
blocks, so quantising here once is cheaper than in the main loop (the elementwise work would repeat).
"""

import triton
import triton.language as tl

from .quant_math import divide_rn, int8_block, to_e4m3


@triton.jit
def quantize_kv_kernel(
    K, V, KMEAN, SV,  # KMEAN [BH, D], SV [BH, D] fp32 (s_v)
    K8, SK, V8T,  # K8 int8 [BH, nk·BK, D], SK fp32 [BH, nk], V8T fp8 [BH, D, nk·BK]
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    N, H, NK,
    BK: tl.constexpr, D: tl.constexpr, INTERPRET: tl.constexpr,
):
    j = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    bh64 = bh.to(tl.int64)
    rows = j * BK + tl.arange(0, BK)
    offs_d = tl.arange(0, D)
    row_ok = (rows < N)[:, None]
    kt = tl.load(K + b.to(tl.int64) * skb + h.to(tl.int64) * skh + rows[:, None] * skn + offs_d[None, :] * skd,
                 mask=row_ok, other=0.0).to(tl.float32)
    mu = tl.load(KMEAN + bh64 * D + offs_d)
    k8, s_k = int8_block(tl.where(row_ok, kt - mu[None, :], 0.0))
    ldk = NK * BK
    tl.store(K8 + bh64 * ldk * D + rows[:, None] * D + offs_d[None, :], k8)
    tl.store(SK + bh64 * NK + j, s_k)

    vt = tl.load(V + b.to(tl.int64) * svb + h.to(tl.int64) * svh + rows[:, None] * svn + offs_d[None, :] * svd,
                 mask=row_ok, other=0.0).to(tl.float32)
    s_v = tl.load(SV + bh64 * D + offs_d)
    v8 = to_e4m3(divide_rn(vt, s_v[None, :]), INTERPRET)
    # Transposed in registers so that the store runs along the contiguous key axis.
    tl.store(V8T + bh64 * D * ldk + offs_d[:, None] * ldk + rows[None, :], tl.trans(v8))
