"""The complement of a query block's selection, for the linear branch (docs/method.md, Linear branch), in one launch:

  KEEP[I, j] = 1 where query block I did NOT select key block j (j < nk), 0 where it did and in the padding columns
               (bf16 [BH, nq, nk_pad]: the left operand of the H_I product, forward.linear_state; the backward's
               dh product and key-block lists are built from it too);
  Z_I        = Z_tot − Σ_{j selected by I} z_j (fp32 [BH, nq, D], exact sums; optional).

H_I, the D×D numerator state, is a dense product on the tensor cores; Z_I is D numbers per query block, so it is
summed here over the selected blocks (topk ≪ nk) in fp32 rather than by a second product that would round z_j or
depend on the TF32 setting. The mask row is written as ones, then zeros at the selected blocks after a barrier of
the program: a torch fill, pad fill, index cast and scatter were four launches for the same row.
"""

import triton
import triton.language as tl


@triton.jit
def complement_kernel(
    IDX, KEEP, ZBLK, ZTOT, ZI,  # IDX int32 [BH, nq, topk]; KEEP bf16 [BH, nq, NK_PAD]; ZBLK [BH, nk, D]; ZTOT [BH, D]
    NQ, NK, NK_PAD, TOPK,
    D: tl.constexpr, KC: tl.constexpr, CT: tl.constexpr,  # KC selected blocks a step, CT mask columns a step
    WITH_Z: tl.constexpr,
):
    i = tl.program_id(0)
    bh64 = tl.program_id(1).to(tl.int64)
    row = KEEP + (bh64 * NQ + i) * NK_PAD
    offs_t = tl.arange(0, CT)
    for c in range(0, NK_PAD, CT):
        cols = c + offs_t
        tl.store(row + cols, tl.where(cols < NK, 1.0, 0.0).to(tl.bfloat16), mask=cols < NK_PAD)
    # The zeros below overwrite ones that other threads of this program stored: order them after those stores.
    tl.debug_barrier()
    offs_c = tl.arange(0, KC)
    offs_d = tl.arange(0, D)
    idx_base = IDX + (bh64 * NQ + i) * TOPK
    z_sel = tl.zeros([D], dtype=tl.float32)
    for t in range(0, tl.cdiv(TOPK, KC)):
        sel = t * KC + offs_c
        ok = sel < TOPK
        blk = tl.load(idx_base + sel, mask=ok, other=0)
        tl.store(row + blk, tl.zeros([KC], dtype=tl.bfloat16), mask=ok)
        if WITH_Z:
            zt = tl.load(ZBLK + (bh64 * NK + blk[:, None]) * D + offs_d[None, :], mask=ok[:, None], other=0.0)
            z_sel += tl.sum(zt, axis=0)
    if WITH_Z:
        tl.store(ZI + (bh64 * NQ + i) * D + offs_d, tl.load(ZTOT + bh64 * D + offs_d) - z_sel)
