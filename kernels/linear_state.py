"""What the linear branch sums over, per query block: the complement mask of the selection (bf16 0/1, the operand of
the H_I product) and the normaliser Z_I = Z_tot − Σ_{j selected by I} z_j (fp32, exact sums).

H_I, the D×D numerator state, is a dense product on the tensor cores (api.linear_state); Z_I is D numbers per
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


@triton.jit
def complement_mask_kernel(
    IDX, KEEP,  # IDX int32 [R, topk] (R = B·H·nq rows, distinct key blocks); KEEP bf16 [R, NKP]
    NK, TOPK, NKP,
    JT: tl.constexpr, KC: tl.constexpr,  # JT key blocks a program, KC selected indices compared a step
):
    """KEEP[r, j] = 1 where row r did not select key block j (j < NK), 0 where it did and in the padding columns
    NK ≤ j < NKP: one launch instead of torch's fill, slice and scatter (three kernels, ≈ 15 µs at Wan-1.3B)."""
    r = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * JT + tl.arange(0, JT)
    keep = j < NK
    for t in range(0, TOPK, KC):
        c = t + tl.arange(0, KC)
        sel = tl.load(IDX + r * TOPK + c, mask=c < TOPK, other=-1)
        keep = keep & (tl.sum((j[:, None] == sel[None, :]).to(tl.int32), axis=1) == 0)
    # via fp32: the interpreter casts a boolean to bf16 as the raw bit pattern 1 (9e-41)
    tl.store(KEEP + r * NKP + j, tl.where(keep, 1.0, 0.0).to(tl.bfloat16), mask=j < NKP)
