"""Low-bit forward (INT8 QKᵀ, FP8 PV) against the fake-quant reference and against the bf16 kernel.

Under the interpreter the INT8 dot is exact and the e4m3 values are produced by the software rounding of
sla2_kernels/quant_math.py (Triton 3.9's interpreter cast mis-rounds); the hardware e4m3 conversion and the
8-bit wgmma are covered by the GPU tests (test_gpu.py).
"""

import math

import pytest
import torch

import sla2_kernels
from sla2_kernels import launch, layouts, tuning
from sla2_train.attention import reference as ref

CASES = [
    (1, 2, 300, 64, 64, 64, torch.bfloat16, "bhnd", False, 2),
    (2, 1, 200, 128, 128, 64, torch.float16, "bnhd", True, 1),
    (1, 2, 257, 64, 64, 128, torch.bfloat16, "bnhd", False, 2),
    (1, 1, 384, 128, 128, 128, torch.float16, "bhnd", True, 2),
    (1, 2, 190, 64, 128, 64, torch.bfloat16, "bhnd", True, 3),  # every block selected
]


def _case_id(c):
    return f"B{c[0]}H{c[1]}N{c[2]}D{c[3]}q{c[4]}k{c[5]}-{str(c[6])[6:]}-{c[7]}-t{c[9]}"


# The pointer kernel (a pointer configuration, or where the tensors do not suit TMA) and the TMA low-bit kernel
# (Q̂ from its own pass, one-level FP8 accumulation): the default configuration, where the tensors suit it, and
# the other split of a query block over programs (FwdConfig.rows): one program where the default takes two
# (b_q 128), two where it takes one (b_q 64), there with the linear branch from the pass over Q instead of the
# kernel's epilogue (FwdConfig.linear_pass).
PATHS = ("pointer", "tma", "tma-other-split")


def _config(path, block_q, head_dim):
    if path == "tma-other-split":
        split = tuning.default_fwd_config(block_q, 64, head_dim, quant=True).rows
        return sla2_kernels.FwdConfig(4, 3, tma=True, rows=0 if split else block_q // 2, linear_pass=True)
    return tuning.pointer_config(block_q, head_dim) if path == "pointer" else None


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_lowbit_matches_fake_quant(case, path, poisoned, kt, monkeypatch):
    B, H, N, D, bq, bk, dtype, layout, strided, topk = case
    (q, k, v), (qf, kf, vf) = kt.make_qkv(B, H, N, D, dtype, layout, strided)
    sel, alpha = kt.random_selection(B, H, N, bq, bk, topk, seed=N * 3 + D)
    kw = dict(block_q=bq, block_k=bk, layout=layout)
    launched = []
    run_kernel = launch.run
    monkeypatch.setattr(launch, "run", lambda name, *a, **k_: (launched.append(name), run_kernel(name, *a, **k_))[1])
    o8, lse8, os8 = sla2_kernels.sla2_forward(q, k, v, sel.indices, alpha, quant=True, config=_config(path, bq, D),
                                              **kw)
    kt.assert_all_written(poisoned)
    tma = path != "pointer" and layouts.tma_ready(*(layouts.bhnd_view(t, layout) for t in (q, k, v)))
    assert ("sla2_fwd_lowbit_tma" if tma else "sla2_fwd_lowbit") in launched, launched
    if path != "pointer":  # the same Q̂, K̂, V̂ and roundings as the pointer kernel: only sums in another order;
        # with the linear branch from the pass over Q, O_l is also rounded to o's dtype before the mix (as the
        # reference rounds it), which the pointer kernel mixes in fp32: one rounding more of o's (1 − α)·O_l part,
        # on average a quarter of the dtype's eps (measured up to 2.1e-3 in bf16; 8e-5 from the epilogue)
        cfg = _config(path, bq, D) or tuning.default_fwd_config(bq, bk, D, quant=True)
        o_ptr, lse_ptr, os_ptr = sla2_kernels.sla2_forward(q, k, v, sel.indices, alpha, quant=True,
                                                           config=_config("pointer", bq, D), **kw)
        assert kt.rel_l1(o8, o_ptr.float()) <= 1e-3 + (torch.finfo(dtype).eps / 4 if cfg.linear_pass else 0)
        assert kt.rel_l1(os8, os_ptr.float()) <= 1e-3
        torch.testing.assert_close(lse8, lse_ptr, rtol=0, atol=1e-4)
    o16 = sla2_kernels.sla2_forward(q, k, v, sel.indices, alpha, quant=False, sparse_out=False, **kw)[0]
    assert os8.shape == q.shape and os8.stride() == o8.stride()
    o8, o16, os8 = kt.to_bhnd(o8, layout), kt.to_bhnd(o16, layout), kt.to_bhnd(os8, layout)
    o_fq = ref.sla2_attention(qf, kf, vf, sel.mask, alpha, bq, bk, quant=True)
    os_fq, lse_fq = ref.fake_quant_sparse_attention(qf, kf, vf, sel.mask, bq, bk)
    err = kt.rel_l1(o8, o_fq)
    assert err <= 1e-2, f"low-bit vs fake-quant reference: relative L1 {err:.2e}"
    err_s = kt.rel_l1(os8, os_fq)  # the sparse branch the output mixed in, which QAT's dα reads
    assert err_s <= 1e-2, f"low-bit sparse output vs fake-quant reference: relative L1 {err_s:.2e}"
    torch.testing.assert_close(lse8, lse_fq, rtol=0, atol=1e-3)
    err16, cos = kt.rel_l1(o8, o16.float()), kt.cosine(o8, o16)
    assert err16 <= 5e-2 and cos >= 0.998, f"low-bit vs bf16: relative L1 {err16:.2e}, cosine {cos:.5f}"


@pytest.mark.parametrize("cfg", [
    sla2_kernels.FwdConfig(8, 2),
    sla2_kernels.FwdConfig(4, 3),
], ids=["8warps-2stages", "4warps-3stages"])
@pytest.mark.parametrize("quant", [False, True])
def test_tile_configurations(cfg, quant, poisoned, kt):
    """The configurations kernels/benchmarks/bench.py sweeps compute the same function."""
    B, H, N, D, bq, bk = 1, 2, 300, 64, 64, 64
    (q, k, v), (qf, kf, vf) = kt.make_qkv(B, H, N, D, torch.bfloat16, "bnhd")
    sel, alpha = kt.random_selection(B, H, N, bq, bk, 3, seed=17)
    o, lse, _ = sla2_kernels.sla2_forward(q, k, v, sel.indices, alpha, block_q=bq, block_k=bk, quant=quant,
                                          layout="bnhd", config=cfg)
    kt.assert_all_written(poisoned)
    o_ref = ref.sla2_attention(qf, kf, vf, sel.mask, alpha, bq, bk, quant=quant)
    assert kt.rel_l1(kt.to_bhnd(o, "bnhd"), o_ref) <= 1e-2
    if not quant:
        _, lse_ref = ref.sparse_attention(qf, kf, vf, sel.mask, bq, bk)
        torch.testing.assert_close(lse, lse_ref, rtol=0, atol=1e-3)


def _fake_quant_sla2(qf, kf, vf, sel, alpha, bq, bk, running_max):
    """(o, lse) of SLA2 with the reference's low-bit sparse branch in either P̃ rounding."""
    o_s, lse = ref.fake_quant_sparse_attention(qf, kf, vf, sel.mask, bq, bk, running_max=running_max)
    o_l = ref.linear_attention_complement(qf, kf, vf, sel.mask, bq, bk)
    return ref.alpha_mix(o_s, o_l, ref.effective_alpha(alpha, sel.mask.all(dim=-1)), bq), lse


def test_exact_max_variant_matches_final_max_reference(kt):
    """exact_max=True (two passes, P̃ against the exact row max) is fake_quant_sparse_attention(running_max=False)."""
    B, H, N, D, bq, bk = 1, 2, 300, 64, 64, 64
    (q, k, v), (qf, kf, vf) = kt.make_qkv(B, H, N, D, torch.bfloat16, "bhnd")
    sel, alpha = kt.random_selection(B, H, N, bq, bk, 3, seed=19)
    cfg = sla2_kernels.FwdConfig(8, 2, exact_max=True)
    o, lse, _ = sla2_kernels.sla2_forward(q, k, v, sel.indices, alpha, block_q=bq, block_k=bk, quant=True,
                                          layout="bhnd", config=cfg)
    o_fq, lse_fq = _fake_quant_sla2(qf, kf, vf, sel, alpha, bq, bk, running_max=False)
    err = kt.rel_l1(o, o_fq)
    assert err <= 1e-2, f"exact_max kernel vs final-max reference: relative L1 {err:.2e}"
    torch.testing.assert_close(lse, lse_fq, rtol=0, atol=1e-3)


def test_each_variant_follows_its_own_rounding(kt):
    """Scores rising by 1 a key block, so the running maximum moves at every selected block: the two P̃
    roundings differ by ~1% relative L1, and each kernel variant is far closer to its own reference than to the
    other. fp16 (the interpreter casts fp32 -> bf16 by truncation, which alone costs ~3e-3) and α = 1 (the
    sparse branch alone), so the kernels' own error (~2e-4) is well below the gap."""
    B, H, N, D, bq, bk = 1, 2, 256, 64, 64, 64
    g = torch.Generator().manual_seed(23)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    q[..., 0] = 1.0
    k[..., 0] = math.sqrt(D) * (torch.arange(N) // bk)  # + 1 a key block on every score
    q, k, v = (t.half() for t in (q, k, v))
    qf, kf, vf = (t.float() for t in (q, k, v))
    sel, _ = kt.random_selection(B, H, N, bq, bk, 3, seed=23)
    refs = {rm: ref.fake_quant_sparse_attention(qf, kf, vf, sel.mask, bq, bk, running_max=rm)[0]
            for rm in (True, False)}
    gap = kt.rel_l1(refs[True], refs[False])
    assert gap >= 3e-3, f"the two roundings should differ on this input: {gap:.2e}"
    for exact_max in (False, True):
        o = sla2_kernels.sla2_forward(q, k, v, sel.indices, 1.0, block_q=bq, block_k=bk, quant=True, layout="bhnd",
                                      config=sla2_kernels.FwdConfig(8, 2, exact_max=exact_max))[0]
        own, other = kt.rel_l1(o, refs[not exact_max]), kt.rel_l1(o, refs[exact_max])
        assert own <= gap / 5 and other >= gap / 2, f"exact_max={exact_max}: own {own:.2e}, other {other:.2e}"


def test_default_is_the_one_pass_kernel():
    """The default configuration rounds P̃ against the running maximum, as the reference's default does."""
    assert tuning.default_fwd_config(64, 64, 64, quant=True).exact_max is False
    assert sla2_kernels.FwdConfig(8, 3).exact_max is False
    with pytest.raises(ValueError, match="exact_max .* pointer low-bit kernel only"):  # no two-pass TMA kernel
        sla2_kernels.FwdConfig(4, 2, tma=True, exact_max=True)
