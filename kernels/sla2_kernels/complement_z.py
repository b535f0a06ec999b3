"""Per query block normaliser of the linear branch: Z_I = Z_tot − Σ_{j selected by I} z_j (fp32, exact sums).

H_I, the D×D numerator state, is a dense product on the tensor cores (forward.linear_state); Z_I is D numbers per
query block, so it is summed here over the selected blocks (topk ≪ nk) in fp32 rather than by a second
product that would round z_j or depend on the TF32 setting.
"""

import triton
import triton.language as tl


@triton.jit
def complement_z_kernel(
    IDX, ZBLK, ZTOT, ZI,  # IDX int32 [BH, nq, topk]; ZBLK fp32 [BH, nk, D]; ZTOT fp32 [BH, D]; ZI fp32 [BH, nq, D]
    NQ, NK, TOPK,
    D: tl.constexpr, KC: tl.constexpr,  # KC selected blocks gathered per step
):
    i = tl.program_id(0)
    bh64 = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, D)
    offs_c = tl.arange(0, KC)
    idx_base = IDX + (bh64 * NQ + i) * TOPK
    z_sel = tl.zeros([D], dtype=tl.float32)
    for t in range(0, tl.cdiv(TOPK, KC)):
        sel = t * KC + offs_c
        ok = sel < TOPK
        blk = tl.load(idx_base + sel, mask=ok, other=0)
        zt = tl.load(ZBLK + (bh64 * NK + blk[:, None]) * D + offs_d[None, :], mask=ok[:, None], other=0.0)
        z_sel += tl.sum(zt, axis=0)
    tl.store(ZI + (bh64 * NQ + i) * D + offs_d, tl.load(ZTOT + bh64 * D + offs_d) - z_sel)
