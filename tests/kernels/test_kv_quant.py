"""precompute with quant=True (the pass over K, V, its totals, then the quantising pass): K̂, s_k, V̂, s_v against
their plain-PyTorch twin (reference.quantised_kv), and the first pass's outputs unchanged by quant.

Under the interpreter the e4m3 values come from the software rounding of sla2_kernels/quant_math.py; the GPU
test test_gpu.py::test_software_e4m3_rounding_equals_hardware shows the hardware conversion gives the same bytes.
"""

from dataclasses import replace

import pytest
import torch

import sla2_kernels
from sla2_train.attention import reference as ref

CASES = [  # B, H, N, D, block_k, dtype, layout, strided
    (1, 2, 300, 64, 64, torch.bfloat16, "bhnd", False),  # ragged last block
    (2, 1, 200, 128, 128, torch.float16, "bnhd", True),  # ragged, fused-QKV strides
    (1, 3, 128, 64, 64, torch.bfloat16, "bnhd", False),  # whole blocks
    (1, 1, 577, 128, 64, torch.bfloat16, "bhnd", True),  # 10 key blocks, one row in the last
]


def _case_id(c):
    return f"B{c[0]}H{c[1]}N{c[2]}D{c[3]}k{c[4]}-{str(c[5])[6:]}-{c[6]}{'-strided' if c[7] else ''}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("blocks_per_program", [None, 3], ids=["one-run", "runs-of-3"])
def test_quantised_kv_equals_reference(case, blocks_per_program, poisoned, kt):
    """runs-of-3: several programs per head, so μ_K and s_v come from several partial results (as on a GPU)."""
    B, H, N, D, bk, dtype, layout, strided = case
    (_, k, v), (_, kf, vf) = kt.make_qkv(B, H, N, D, dtype, layout, strided)
    v = v * torch.logspace(-2, 1, D, dtype=dtype)  # channels of different ranges: per-channel scales matter
    vf = kt.to_bhnd(v, layout).float()
    st = sla2_kernels.precompute(k, v, block_k=bk, layout=layout, quant=True,
                                 config=sla2_kernels.PrecomputeConfig(blocks_per_program=blocks_per_program))
    kt.assert_all_written(poisoned)
    k_hat, s_k, v_hat, s_v, mean = ref.quantised_kv(kf, vf, bk)
    nk = -(-N // bk)

    # scales: s_v is a maximum and an IEEE division, so equal; s_k and μ_K differ from torch's only by the order
    # in which the token mean is summed
    torch.testing.assert_close(st.sv.view(B, H, D), s_v, rtol=0, atol=0)
    torch.testing.assert_close(st.kmean.view(B, H, D), mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(st.sk.view(B, H, nk), s_k, rtol=1e-6, atol=0)

    k8 = st.k8.view(B, H, nk * bk, D)
    step = (k8[:, :, :N].float() - k_hat).abs()
    assert float(step.max()) <= 1, "K̂ more than one INT8 step from the reference"
    assert float((step > 0).float().mean()) < 1e-3, "K̂ differs beyond rounding ties"
    v8 = st.v8t.view(B, H, D, nk * bk).float().transpose(-1, -2)
    torch.testing.assert_close(v8[:, :, :N], v_hat, rtol=0, atol=0)  # same quotient, same e4m3 rounding
    assert bool((k8[:, :, N:] == 0).all()) and bool((v8[:, :, N:] == 0).all()), "padded rows must be 0"


@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
def test_quant_leaves_the_linear_sums_unchanged(layout, kt):
    """h_j (with its zero padding blocks), z_j, the key-block sums, Z_tot and μ_K: the same with and without quant,
    bit for bit (one pass computes them either way)."""
    (_, k, v), _ = kt.make_qkv(1, 2, 450, 64, torch.bfloat16, layout)
    plain = sla2_kernels.precompute(k, v, block_k=64, layout=layout)
    quant = sla2_kernels.precompute(k, v, block_k=64, layout=layout, quant=True)
    for name in ("hblk", "zblk", "ksum", "ztot", "kmean"):
        assert torch.equal(getattr(plain, name), getattr(quant, name)), name


def test_h_padding_blocks_are_zero(poisoned, kt):
    """nk = 10 key blocks, h stored for 16: the six padding blocks are written as zeros by the pass itself."""
    (_, k, v), _ = kt.make_qkv(1, 2, 600, 64, torch.bfloat16, "bhnd")
    st = sla2_kernels.precompute(k, v, block_k=64, layout="bhnd")
    kt.assert_all_written(poisoned)
    assert st.hblk.shape[1] == 16
    assert bool((st.hblk[:, 10:] == 0).all()) and bool((st.hblk[:, :10] != 0).any())


@pytest.mark.parametrize("blocks_per_program", [None, 3, 5])
def test_h_by_tma_store_equals_the_pointer_store(blocks_per_program, poisoned, kt):
    """PrecomputeConfig(tma_store=True): h_j leaves by TMA stores, the same bytes, padding included. nk = 10 stored
    for 16; runs of 3 or 5 blocks a program reach past the 16 (18, 20), where nothing may be stored."""
    (_, k, v), _ = kt.make_qkv(1, 2, 600, 64, torch.bfloat16, "bnhd")
    cfg = sla2_kernels.PrecomputeConfig(blocks_per_program=blocks_per_program)
    plain = sla2_kernels.precompute(k, v, block_k=64, layout="bnhd", config=cfg)
    tma = sla2_kernels.precompute(k, v, block_k=64, layout="bnhd", config=replace(cfg, tma_store=True))
    kt.assert_all_written(poisoned)
    assert tma.hblk.shape[1] == 16 and torch.equal(tma.hblk, plain.hblk)
    for name in ("zblk", "ksum", "ztot", "kmean"):
        assert torch.equal(getattr(plain, name), getattr(tma, name)), name
