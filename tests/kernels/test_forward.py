"""bf16/fp16 SLA2 forward kernel against the float32 reference, under the interpreter (TRITON_INTERPRET=1).

Relative L1 ≤ 1e-2 on O (bf16 P and a bf16 D×D product in the linear epilogue give ~5e-3 on random data),
lse to 1e-3. Each case draws fresh inputs and poisons every buffer the kernels allocate.
"""

import pytest
import torch

import sla2_kernels
from sla2_kernels import blocked_reference, launch, layouts, tuning
from sla2_train.attention import reference as ref

# (B, H, N, D, block_q, block_k, dtype, layout, strided, topk). Together: b_q and b_k in {64, 128},
# D in {64, 128}, bf16 and fp16, both layouts (contiguous and views into a fused buffer), ragged last
# query and key blocks (257 leaves one token), odd topk (an empty slot when two blocks share a tile),
# and topk = nk (no linear branch, α = 1).
CASES = [
    (1, 2, 300, 64, 64, 64, torch.bfloat16, "bhnd", False, 2),
    (2, 1, 200, 128, 128, 64, torch.float16, "bnhd", True, 1),
    (1, 2, 257, 64, 64, 128, torch.bfloat16, "bnhd", False, 2),
    (1, 1, 384, 128, 128, 128, torch.float16, "bhnd", True, 2),
    (1, 2, 190, 64, 128, 64, torch.bfloat16, "bhnd", True, 3),  # nk = 3: every block selected
    (2, 2, 130, 128, 64, 64, torch.bfloat16, "bnhd", True, 1),
    (1, 1, 320, 64, 64, 64, torch.float16, "bnhd", False, 3),
]


def _case_id(c):
    return f"B{c[0]}H{c[1]}N{c[2]}D{c[3]}q{c[4]}k{c[5]}-{str(c[6])[6:]}-{c[7]}-t{c[9]}"


# The TMA kernel (the default where the tensors allow it), the same with a query block split over two programs
# (FwdConfig.rows), each with the linear branch from the pass over Q instead of its epilogue
# (FwdConfig.linear_pass), and the pointer kernel.
PATHS = {"tma": lambda bq: sla2_kernels.FwdConfig(4, 2, tma=True),
         "tma-half-rows": lambda bq: sla2_kernels.FwdConfig(4, 2, tma=True, rows=bq // 2),
         "tma-linear-pass": lambda bq: sla2_kernels.FwdConfig(4, 2, tma=True, linear_pass=True),
         "tma-half-rows-linear-pass": lambda bq: sla2_kernels.FwdConfig(4, 2, tma=True, rows=bq // 2,
                                                                        linear_pass=True),
         "pointer": lambda bq: sla2_kernels.FwdConfig(8, 3)}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_matches_reference(case, path, poisoned, kt):
    B, H, N, D, bq, bk, dtype, layout, strided, topk = case
    (q, k, v), (qf, kf, vf) = kt.make_qkv(B, H, N, D, dtype, layout, strided)
    sel, alpha = kt.random_selection(B, H, N, bq, bk, topk, seed=N * 7 + D)
    o, lse, o_s = sla2_kernels.sla2_forward(q, k, v, sel.indices, alpha, block_q=bq, block_k=bk, quant=False,
                                            layout=layout, config=PATHS[path](bq))
    kt.assert_all_written(poisoned)
    assert o.shape == q.shape and o.dtype == q.dtype and lse.shape == (B, H, N) and lse.dtype == torch.float32
    assert o_s.shape == q.shape and o_s.dtype == q.dtype
    o_ref = ref.sla2_attention(qf, kf, vf, sel.mask, alpha, bq, bk)
    o_s_ref, lse_ref = ref.sparse_attention(qf, kf, vf, sel.mask, bq, bk)
    err = kt.rel_l1(kt.to_bhnd(o, layout), o_ref)
    assert err <= 1e-2, f"relative L1 {err:.2e}"
    err_s = kt.rel_l1(kt.to_bhnd(o_s, layout), o_s_ref)  # the sparse output the backward's dq loop reads
    assert err_s <= 1e-2, f"O_s relative L1 {err_s:.2e}"
    torch.testing.assert_close(lse, lse_ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize("quant", [False, True], ids=["bf16", "lowbit"])
@pytest.mark.parametrize("path", PATHS)
def test_sparse_output_only_when_asked(path, quant, poisoned, kt):
    """sparse_out=False (no backward to come, or in low bit none through α): the same o and lse bit for bit and no
    O_s buffer; with it, O_s (low bit: O_s^q) is the sparse branch alone, bit for bit the output of the same call
    at α = 1, and every buffer the kernels allocate is written."""
    B, H, N, D, bq, bk = 1, 2, 300, 64, 64, 64
    (q, k, v), _ = kt.make_qkv(B, H, N, D, torch.bfloat16, "bnhd")
    sel, alpha = kt.random_selection(B, H, N, bq, bk, 2, seed=31)
    kw = dict(block_q=bq, block_k=bk, quant=quant, layout="bnhd", config=PATHS[path](bq))
    o, lse, o_s = sla2_kernels.sla2_forward(q, k, v, sel.indices, alpha, **kw)
    kt.assert_all_written(poisoned)
    o2, lse2, o_s2 = sla2_kernels.sla2_forward(q, k, v, sel.indices, alpha, sparse_out=False, **kw)
    o1, _, _ = sla2_kernels.sla2_forward(q, k, v, sel.indices, torch.ones_like(alpha), sparse_out=False, **kw)
    assert o_s.shape == q.shape and o_s2.numel() == 0
    torch.testing.assert_close(o2, o, rtol=0, atol=0)
    torch.testing.assert_close(lse2, lse, rtol=0, atol=0)
    torch.testing.assert_close(o_s, o1, rtol=0, atol=0)


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of t whose data starts 2 bytes past a 16-byte boundary (TMA cannot address it)."""
    return torch.empty(t.numel() + 1, dtype=t.dtype)[1:].view_as(t).copy_(t)


def test_tma_kernel_is_used_where_the_tensors_allow_it(monkeypatch, kt):
    """Aligned inputs go to the TMA kernel; a misaligned one falls back to the pointer kernel (at the pointer
    kernel's own default configuration) with the same result; so does a GPU without TMA; the low-bit forward
    likewise: its TMA kernel by default, its pointer kernel for a misaligned input or a pointer configuration."""
    launched = []
    run_kernel = launch.run
    monkeypatch.setattr(launch, "run", lambda name, *a, **kw: (
        launched.append((name, kw.get("num_warps"), kw.get("num_stages"))), run_kernel(name, *a, **kw)))
    B, H, N, D, bq, bk = 1, 2, 200, 64, 64, 64
    (q, k, v), (qf, kf, vf) = kt.make_qkv(B, H, N, D, torch.bfloat16, "bnhd")
    sel, alpha = kt.random_selection(B, H, N, bq, bk, 2, seed=5)
    run = lambda q_, quant=False, config=None: sla2_kernels.sla2_forward(  # noqa: E731
        q_, k, v, sel.indices, alpha, block_q=bq, block_k=bk, quant=quant, layout="bnhd", config=config)[0]
    pointer = tuning.pointer_config(bq, D)
    kernels = lambda: [name for name, *_ in launched if name.startswith("sla2_fwd")]  # noqa: E731
    o_tma = run(q)
    assert kernels() == ["sla2_fwd_tma"]
    assert layouts.tma_ready(q) and not layouts.tma_ready(_misaligned(q))
    launched.clear()
    o_ptr = run(_misaligned(q))
    assert [x for x in launched if x[0] == "sla2_fwd"] == [("sla2_fwd", pointer.num_warps, pointer.num_stages)]
    o_ref = ref.sla2_attention(qf, kf, vf, sel.mask, alpha, bq, bk)
    assert kt.rel_l1(kt.to_bhnd(o_ptr, "bnhd"), o_ref) <= 1e-2 and kt.rel_l1(o_ptr, o_tma.float()) <= 1e-2
    launched.clear()
    with monkeypatch.context() as m:
        m.setattr(layouts, "tma_hardware", lambda device: False)
        run(q)
    assert kernels() == ["sla2_fwd"]
    launched.clear()
    run(q, quant=True)
    assert kernels() == ["sla2_fwd_lowbit_tma"]
    launched.clear()
    run(q, quant=True, config=pointer)
    assert kernels() == ["sla2_fwd_lowbit"]
    launched.clear()
    run(_misaligned(q), quant=True)
    assert [x for x in launched if x[0].startswith("sla2_fwd")] == [("sla2_fwd_lowbit", pointer.num_warps,
                                                                     pointer.num_stages)]
    launched.clear()
    run(_misaligned(q), quant=True, config=PATHS["tma"](64))
    assert kernels() == ["sla2_fwd_lowbit"]
    launched.clear()
    run(_misaligned(q), quant=False, config=PATHS["tma-half-rows"](64))  # a program's rows are a TMA setting
    assert kernels() == ["sla2_fwd"]


def test_gluon_forward_option_falls_back_where_gluon_cannot_run(monkeypatch, kt):
    """FwdConfig.gluon needs tma; under the interpreter (no Gluon there) the Triton TMA kernel runs with the same
    output; on a GPU the rule refuses, each alone, what the Gluon kernel does not implement: O_s stored, the pass
    over Q, 64-row programs of a 128-row block, fp16, b_k 128, head_dim 96, a GPU other than Hopper."""
    from types import SimpleNamespace

    from sla2_kernels import forward

    with pytest.raises(ValueError, match="gluon"):
        sla2_kernels.FwdConfig(4, 2, gluon=True)
    with pytest.raises(ValueError, match="gluon_overlap"):
        sla2_kernels.FwdConfig(4, 2, tma=True, gluon_overlap=True)
    # FwdConfig.flipped: the options that depend on the flipped one follow it, and the result is valid
    full = sla2_kernels.FwdConfig(4, 2, tma=True, gluon=True, gluon_overlap=True)
    assert full.flipped("tma") == sla2_kernels.FwdConfig(4, 2)
    assert full.flipped("gluon") == sla2_kernels.FwdConfig(4, 2, tma=True)
    assert sla2_kernels.FwdConfig(4, 2, exact_max=True).flipped("gluon_overlap") == full
    assert full.flipped("gluon_overlap") == sla2_kernels.FwdConfig(4, 2, tma=True, gluon=True)
    launched = []
    run_kernel = launch.run
    monkeypatch.setattr(launch, "run", lambda name, *a, **kw: (launched.append(name), run_kernel(name, *a, **kw)))
    (q, k, v), _ = kt.make_qkv(1, 2, 300, 64, torch.bfloat16, "bhnd")
    sel, alpha = kt.random_selection(1, 2, 300, 64, 64, 2, seed=7)
    run = lambda cfg: sla2_kernels.sla2_forward(q, k, v, sel.indices, alpha, block_q=64, block_k=64,  # noqa: E731
                                                quant=False, layout="bhnd", config=cfg, sparse_out=False)[:2]
    want = run(sla2_kernels.FwdConfig(4, 2, tma=True))
    launched.clear()
    got = run(sla2_kernels.FwdConfig(4, 2, tma=True, gluon=True))
    got_overlap = run(sla2_kernels.FwdConfig(4, 2, tma=True, gluon=True, gluon_overlap=True))
    assert [n for n in launched if n.startswith("sla2_fwd")] == ["sla2_fwd_tma"] * 2
    for a, b, c in zip(got, want, got_overlap):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(c, b, rtol=0, atol=0)

    if not forward.gluon_tiles.AVAILABLE:
        return
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    monkeypatch.setattr(forward.gluon_tiles, "hopper", lambda device: True)
    on = sla2_kernels.FwdConfig(4, 2, tma=True, gluon=True)

    def suits(cfg=on, bq=128, bk=64, d=128, dtype=torch.bfloat16, sparse_out=False):
        t = torch.zeros(1, 2, 300, d, dtype=dtype)
        p = SimpleNamespace(block_q=bq, block_k=bk, D=d, layout="bhnd")
        return forward.fwd_gluon_suits(cfg, p, t, sparse_out)

    assert suits() and suits(bq=64, d=64)
    assert suits(cfg=sla2_kernels.FwdConfig(4, 2, tma=True, gluon=True, gluon_overlap=True), bq=64)
    assert not suits(cfg=sla2_kernels.FwdConfig(4, 2, tma=True))
    assert not suits(sparse_out=True)
    assert not suits(cfg=sla2_kernels.FwdConfig(4, 2, tma=True, gluon=True, linear_pass=True))
    assert not suits(cfg=sla2_kernels.FwdConfig(4, 2, tma=True, gluon=True, rows=64))
    assert not suits(dtype=torch.float16)
    assert not suits(bk=128)
    assert not suits(d=96)
    monkeypatch.setattr(forward.gluon_tiles, "hopper", lambda device: False)  # a GPU after Hopper: no wgmma
    assert not suits()


def test_rows_a_program_are_checked(kt):
    """FwdConfig.rows is refused without TMA tiles at once, and where it does not divide block_q at the call."""
    with pytest.raises(ValueError, match="rows"):
        sla2_kernels.FwdConfig(4, 2, rows=64)
    (q, k, v), _ = kt.make_qkv(1, 1, 256, 64, torch.bfloat16, "bhnd")
    sel, alpha = kt.random_selection(1, 1, 256, 64, 64, 2, seed=3)
    with pytest.raises(ValueError, match="rows=48 must divide block_q=64"):
        sla2_kernels.sla2_forward(q, k, v, sel.indices, alpha, block_q=64, block_k=64, quant=False, layout="bhnd",
                                  config=sla2_kernels.FwdConfig(4, 2, tma=True, rows=48))


@pytest.mark.parametrize("alpha_kind", ["float", "per_head", "per_block"])
def test_alpha_broadcast_and_branches(alpha_kind, kt):
    """α = 1 gives the sparse branch alone, α = 0 the linear branch alone; α broadcasts from any shape."""
    B, H, N, D, bq, bk = 1, 2, 260, 64, 64, 64
    (q, k, v), (qf, kf, vf) = kt.make_qkv(B, H, N, D, torch.bfloat16, "bhnd")
    sel, alpha = kt.random_selection(B, H, N, bq, bk, 2, seed=11)
    state = sla2_kernels.precompute(k, v, block_k=bk, layout="bhnd")
    o_s_ref, _ = ref.sparse_attention(qf, kf, vf, sel.mask, bq, bk)
    o_l_ref = ref.linear_attention_complement(qf, kf, vf, sel.mask, bq, bk)
    for value, want in ((1.0, o_s_ref), (0.0, o_l_ref)):
        a = {"float": value, "per_head": torch.full((H, 1), value), "per_block": torch.full((B, H, 5), value)}[alpha_kind]
        o = sla2_kernels.sla2_forward(q, k, v, sel.indices, a, block_q=bq, block_k=bk, quant=False, layout="bhnd",
                                      kv_state=state)[0]
        assert kt.rel_l1(o, want) <= 1e-2


def test_blocked_reference_matches_reference(kt):
    """The oracle of the GPU tests and of bench --check equals the reference (fp32, both variants; low-bit in
    both P̃ roundings, the running maximum by default)."""
    for quant in (False, True):
        for N, D, bq, bk, topk in [(300, 64, 64, 64, 2), (200, 128, 128, 64, 1), (257, 64, 64, 128, 2), (190, 64, 128, 64, 3)]:
            (_, _, _), (qf, kf, vf) = kt.make_qkv(2, 2, N, D, torch.bfloat16, "bhnd")
            sel, alpha = kt.random_selection(2, 2, N, bq, bk, topk, seed=N + topk)
            o, lse = blocked_reference.sla2_forward(qf, kf, vf, sel.indices, alpha, bq, bk, quant)
            o_ref = ref.sla2_attention(qf, kf, vf, sel.mask, alpha, bq, bk, quant)
            fn = ref.fake_quant_sparse_attention if quant else ref.sparse_attention
            if quant:  # ulp-level differences in S can flip an e4m3 rounding tie of P̃: one element moves 1/16
                assert kt.rel_l1(o, o_ref) <= 1e-4
                o_s, _ = blocked_reference.sparse_branch(qf, kf, vf, sel.indices, bq, bk, quant, running_max=False)
                o_s_ref, _ = fn(qf, kf, vf, sel.mask, bq, bk, running_max=False)
                assert kt.rel_l1(o_s, o_s_ref) <= 1e-4
            else:
                torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(lse, fn(qf, kf, vf, sel.mask, bq, bk)[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("N, bq, bk, D, layout", [(300, 64, 64, 64, "bhnd"), (545, 128, 64, 128, "bnhd")])
def test_linear_state_is_the_sum_over_the_unselected_blocks(N, bq, bk, D, layout, poisoned, kt):
    """linear_state: H_I = Σ_{j not selected} φK_jᵀV_j and Z_I likewise, against float64 sums; nk that is
    not a multiple of the alignment (5 and 9 key blocks here) pads h with zero blocks that add nothing."""
    B, H, topk = 1, 2, 2
    (_, k, v), (_, kf, vf) = kt.make_qkv(B, H, N, D, torch.bfloat16, layout)
    sel, _ = kt.random_selection(B, H, N, bq, bk, topk, seed=N)
    st = sla2_kernels.precompute(k, v, block_k=bk, layout=layout)
    h_i, z_i = sla2_kernels.linear_state(sel.indices, st, block_q=bq)
    kt.assert_all_written(poisoned)
    nq, nk = -(-N // bq), -(-N // bk)
    phik = torch.nn.functional.pad(torch.softmax(kf.double(), dim=-1), (0, 0, 0, nk * bk - N))
    vp = torch.nn.functional.pad(vf.double(), (0, 0, 0, nk * bk - N))
    h = torch.einsum("bhjrd,bhjre->bhjde", phik.view(B, H, nk, bk, D), vp.view(B, H, nk, bk, D))
    z = phik.view(B, H, nk, bk, D).sum(dim=3)
    keep = (~sel.mask).double()  # [B, H, nq, nk]
    h_want = torch.einsum("bhij,bhjde->bhide", keep, h).reshape(B * H, nq, D, D)
    z_want = torch.einsum("bhij,bhjd->bhid", keep, z).reshape(B * H, nq, D)
    assert h_i.dtype == torch.bfloat16 and z_i.dtype == torch.float32
    assert kt.rel_l1(h_i, h_want) <= 1e-2  # φK, h_j and H_I each rounded to bf16
    torch.testing.assert_close(z_i.double(), z_want, rtol=1e-2, atol=1e-3)  # φK rounded to bf16, sums exact
    assert bool((st.hblk[:, nk:] == 0).all()) and st.hblk.shape[1] % 8 == 0
