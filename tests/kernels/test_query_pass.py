"""The pass over Q before the TMA forward kernels (query_pass.py), each output against its PyTorch twin, under the
interpreter: O_l against the reference's linear branch, Q̂ and s_q against the reference's INT8 block quantiser
(exactly), the lse shift against q·μ_K/√D. Fresh inputs each case; every buffer poisoned first."""

import math

import pytest
import torch

import sla2_kernels
from sla2_kernels import forward, launch
from sla2_train.attention import reference as ref

# (B, H, N, D, block_q, block_k, dtype, layout, strided, topk): ragged last query and key blocks (257, 300, 130),
# both layouts, views into a fused buffer, bf16 and fp16, D 64 and 128.
CASES = [
    (1, 2, 300, 64, 64, 64, torch.bfloat16, "bhnd", False, 2),
    (1, 2, 257, 64, 128, 64, torch.float16, "bnhd", True, 1),
    (2, 1, 130, 128, 64, 128, torch.bfloat16, "bnhd", False, 1),
]


def _case_id(c):
    return f"B{c[0]}H{c[1]}N{c[2]}D{c[3]}q{c[4]}k{c[5]}-{str(c[6])[6:]}-{c[7]}-t{c[9]}"


@pytest.mark.parametrize("quant", [False, True], ids=["bf16", "lowbit"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_query_pass_matches_reference(case, quant, poisoned, kt):
    B, H, N, D, bq, bk, dtype, layout, strided, topk = case
    (q, k, v), (qf, kf, vf) = kt.make_qkv(B, H, N, D, dtype, layout, strided)
    sel, alpha = kt.random_selection(B, H, N, bq, bk, topk, seed=N * 5 + D)
    p = forward.check_forward(q, k, v, sel.indices, alpha, bq, bk, layout)
    state = sla2_kernels.precompute(k, v, block_k=bk, layout=layout, quant=quant)
    lin = sla2_kernels.linear_state(p.idx, state, block_q=bq)
    o = launch.empty_like(q)
    lse = launch.empty(B, H, N, dtype=torch.float32)
    q8, sq = forward.query_pass(q, p, o, lse, lin, state.kmean if quant else None, quant)

    o_l = ref.linear_attention_complement(qf, kf, vf, sel.mask, bq, bk)
    err = kt.rel_l1(kt.to_bhnd(o, layout), o_l)
    assert err <= 1e-2, f"O_l: relative L1 {err:.2e}"  # bf16 φQ and H_I (~4e-3 on random data)
    if not quant:
        return
    nq = -(-N // bq)
    q_hat, s_q = ref.quantize_int8_blocks(qf, bq)  # integer-valued, [B, H, N, D]; [B, H, nq]
    got = q8.view(B, H, nq * bq, D)
    assert torch.equal(got[:, :, :N].float(), q_hat) and not got[:, :, N:].any()  # padded rows 0
    assert torch.equal(sq.view(B, H, nq), s_q)
    shift = (qf @ kf.mean(dim=2, keepdim=True).transpose(-1, -2)).squeeze(-1) / math.sqrt(D)
    torch.testing.assert_close(lse, shift, rtol=0, atol=1e-4)
