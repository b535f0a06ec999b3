"""kernels/benchmarks/bench.py --sweep's choice, on the CPU with a stand-in timer: every candidate is recorded,
the fastest of each kind times the table rows, and a candidate computing other arithmetic than the default
(exact_max flipped) is timed for the table but never chosen. Also bench.py's router pooling sweep and
bench_train.py's dk/dv operand choice and candidate configurations."""

import random
import sys
import types
from pathlib import Path

import sla2_kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "kernels" / "benchmarks"))
import bench  # noqa: E402  (a script's module, beside bench_common)


def test_the_sweep_records_every_candidate_and_picks_the_fastest_default_arithmetic():
    rng = random.Random(3)
    runs = []

    def time_ms(fn):  # a stand-in for do_bench: the candidate is not run (no GPU), its time is drawn
        runs.append(fn)
        return rng.uniform(0.1, 1.0)

    b = object.__new__(bench.Bench)
    b.sk, b.fwd_cfg, b.pre_cfg = sla2_kernels, {}, None
    b.launch = types.SimpleNamespace(LAST_COMPILED={})
    b.fwd_mod = types.SimpleNamespace(check_forward=lambda *args: None)
    b.query_pass_fn = lambda *args, **kwargs: None  # never run: no GPU
    b.results = dict(configs=[], precompute_configs=[], errors=[], rows=[], device="none", torch="-", triton="-",
                     date="-")
    b.left, b.time_ms, b.save, b.forward = (lambda: 1e9), time_ms, (lambda: None), None
    b.sweep(None, None, None, None, None, None, None, {}, "1.3b", 0.97)

    configs = b.results["configs"]
    assert len(runs) == len(configs) + len(b.results["precompute_configs"]) and not b.results["errors"]
    default = sla2_kernels.FwdConfig(4, 2).exact_max
    for quant in (False, True):
        mine = [c for c in configs if c["quant"] == quant]
        eligible = [c for c in mine if c["exact_max"] == default]
        assert len(eligible) < len(mine) if quant else len(eligible) == len(mine)  # low bit: one other variant
        fastest = min(eligible, key=lambda c: c["t_ms"])
        chosen = b.fwd_cfg[quant]
        assert (chosen.num_warps, chosen.num_stages, chosen.tma, chosen.maxnreg, chosen.rows, chosen.linear_pass,
                chosen.exact_max) == (fastest["num_warps"], fastest["num_stages"], fastest["tma"], fastest["maxnreg"],
                                      fastest["rows"], fastest["linear_pass"], default)

    pre = [c for c in b.results["precompute_configs"] if c["kind"] == "precompute"]
    quant_pass = [c for c in b.results["precompute_configs"] if c["kind"] == "precompute_quant"]
    assert [c["quantize_warps"] for c in quant_pass] == [2, 4, 8]
    best_pre = min(pre, key=lambda c: c["t_ms"])
    best_warps = min(quant_pass, key=lambda c: c["t_ms"])["quantize_warps"]
    assert b.pre_cfg == sla2_kernels.PrecomputeConfig(best_pre["blocks_per_program"], best_pre["num_warps"],
                                                      best_pre["num_stages"], tma_store=best_pre["tma_store"],
                                                      quantize_warps=best_warps)
    table = b.table()  # every candidate has its line
    assert [c["warps"] for c in b.results["precompute_configs"] if c["kind"] == "query_pass"] == [4, 8]
    assert table.count("quant=") == len(configs) and table.count("low bit, quantise") == 3
    assert table.count("pass over Q (low bit), ") == 2


def test_the_router_pooling_sweep_times_every_candidate_and_restores_the_defaults(kt):
    """bench.py's router pooling sweep, run on the interpreter with a stand-in timer that calls the router: each
    (programs an SM, warps) candidate is in force while it is timed, pooling Q alone and Q with K, its scores agree
    with the defaults', and the defaults are back afterwards."""
    import torch
    from sla2_kernels import routing

    seen = []

    def time_ms(fn, graph=False):
        assert graph  # the router's launches without host gaps
        fn()
        seen.append((routing.ROUTER_POOL_PROGRAMS_PER_SM, routing.ROUTER_POOL_WARPS))
        return 0.1

    b = object.__new__(bench.Bench)
    b.torch, b.sk, b.routing, b.time_ms = torch, sla2_kernels, routing, time_ms
    (q, k, v), _ = kt.make_qkv(1, 2, 320, 64, torch.bfloat16, "bhnd")
    eye = torch.eye(64).expand(2, 64, 64)
    kw = dict(block_q=64, block_k=64, layout="bhnd")
    defaults = routing.ROUTER_POOL_PROGRAMS_PER_SM, routing.ROUTER_POOL_WARPS
    out = b.pool_sweep(q, k, eye, eye, 3, sla2_kernels.precompute(k, v, block_k=64, layout="bhnd"), kw)
    assert seen == list(b.POOL_CANDIDATES) * 2
    assert sorted(out) == sorted(f"router_pool_s{s}w{w}_{m}" for m in ("q", "qk") for s, w in b.POOL_CANDIDATES)
    assert all(t == 0.1 for t in out.values())
    assert (routing.ROUTER_POOL_PROGRAMS_PER_SM, routing.ROUTER_POOL_WARPS) == defaults


def test_bench_train_times_each_dkdv_option_flipped_and_restores_the_problem(kt):
    """bench_train.py's dk/dv step with each BwdConfig option of DKDV_FLIPS flipped, on the interpreter with a
    stand-in timer that runs the step: the problem's own configuration and the flipped one are timed in turns and
    each reported as the median of its rounds, dK and dV are compared, and the problem keeps its configuration."""
    import torch
    from sla2_kernels import backward
    import bench_train

    seen, times = [], []

    def time_ms(fn):
        fn()
        seen.append(p.cfg.dkdv_register_kv)
        return times.pop(0)

    b = object.__new__(bench_train.Bench)
    b.torch, b.bwd, b.time_ms, b.PAIR_ROUNDS = torch, backward, time_ms, 3
    q, k, v = kt.make_qkv(1, 2, 300, 64, torch.bfloat16, "bhnd")[0]
    bq, bk = bench_train.BLOCK_Q, bench_train.BLOCK_K
    idx = torch.arange(2, dtype=torch.int32).expand(1, 2, -(-300 // bq), 2).contiguous()
    alpha = torch.full((1, 2, -(-300 // bq)), 0.5)
    o, lse, _ = sla2_kernels.sla2_forward(q, k, v, idx, alpha, block_q=bq, block_k=bk, quant=False, layout="bhnd")
    b.fwd = sla2_kernels.forward
    for reg in (True, False):
        cfg = sla2_kernels.BwdConfig(4, 2, 4, 3, qs=32, dq_tma=True, dkdv_tma=True, dkdv_register_kv=reg)
        # the problem as bench_train builds it
        p = b.prepared(torch.randn_like(q), q, k, v, o, lse, idx, alpha, b.backward_state(k, v, idx), cfg)
        backward.run_dq(p)
        row, got = {}, {}
        seen.clear()
        times[:] = [0.5, 0.2, 0.1, 0.9, 0.3, 0.4]  # own, flipped, own, ...: medians 0.3 and 0.4
        assert "dkdv_register_kv" in b.DKDV_FLIPS
        got.update(b.dkdv_flipped(p, row, "dkdv_register_kv"))
        assert got == {f"bwd_dkdv_register_kv_{reg}": 0.3, f"bwd_dkdv_register_kv_{not reg}": 0.4}
        assert seen == [reg, not reg] * 3 and p.cfg == cfg
        assert row["dkdv_register_kv_flipped_equal"] is True and row["dkdv_register_kv_own"] is reg


def test_bench_train_times_the_dq_kernel_with_the_gluon_options_flipped(kt):
    """bench_train.py's dq kernel with BwdConfig.dq_gluon flipped, and the Gluon kernel's overlapped loop flipped on
    the Gluon kernel, on the interpreter (where both fall back to the Triton kernel) with a stand-in timer that runs
    the kernel: both timed in turns and reported as medians, dQ and the row statistics compared, and the problem
    keeps its configuration."""
    import torch
    from sla2_kernels import backward, launch
    import bench_train

    seen, times = [], []

    def time_ms(fn):
        fn()
        seen.append((p.cfg.dq_gluon, p.cfg.dq_gluon_overlap))
        return times.pop(0)

    b = object.__new__(bench_train.Bench)
    b.torch, b.bwd, b.launch, b.time_ms, b.PAIR_ROUNDS = torch, backward, launch, time_ms, 3
    q, k, v = kt.make_qkv(1, 2, 300, 64, torch.bfloat16, "bhnd")[0]
    bq, bk = bench_train.BLOCK_Q, bench_train.BLOCK_K
    idx = torch.arange(2, dtype=torch.int32).expand(1, 2, -(-300 // bq), 2).contiguous()
    alpha = torch.full((1, 2, -(-300 // bq)), 0.5)
    o, lse, o_s = sla2_kernels.sla2_forward(q, k, v, idx, alpha, block_q=bq, block_k=bk, quant=False, layout="bhnd",
                                            sparse_out=True)
    b.fwd = sla2_kernels.forward
    cfg = sla2_kernels.BwdConfig(4, 2, 4, 3, qs=32, dq_rows=64, dq_tma=True, dkdv_tma=True)
    for tag, kept in (("", None), ("_os", o_s)):
        p = b.prepared(torch.randn_like(q), q, k, v, o, lse, idx, alpha, b.backward_state(k, v, idx), cfg, o_s=kept)
        row = {}
        seen.clear()
        times[:] = [0.5, 0.2, 0.1, 0.9, 0.3, 0.4]  # own, flipped, own, ...: medians 0.3 and 0.4
        got = b.dq_flipped(p, row, tag)
        assert got == {f"bwd_dq{tag}_gluon_False": 0.3, f"bwd_dq{tag}_gluon_True": 0.4}
        assert seen == [(False, False), (True, False)] * 3 and p.cfg == cfg
        assert row[f"dq{tag}_gluon_flipped_rel_dq"] == 0.0 and row[f"dq{tag}_gluon_flipped_rel_rows"] == 0.0
        seen.clear()
        times[:] = [0.5, 0.2, 0.1, 0.9, 0.3, 0.4]
        assert b.DQ_FLIPS == ("dq_gluon", "dq_gluon_overlap")
        got = b.dq_flipped(p, row, tag, "dq_gluon_overlap")
        assert got == {f"bwd_dq{tag}_gluon_overlap_False": 0.3, f"bwd_dq{tag}_gluon_overlap_True": 0.4}
        assert seen == [(True, False), (True, True)] * 3 and p.cfg == cfg
        assert row[f"dq{tag}_gluon_overlap_flipped_rel_dq"] == 0.0


def test_bench_times_the_forward_with_the_gluon_option_flipped(kt):
    """bench.py's bf16 main kernel with FwdConfig.gluon flipped, on the interpreter (where the option falls back to
    the Triton kernel) with a stand-in timer: each configuration timed in turns and reported as a median, the
    flipped kernel's o and lse compared, linear_pass undone for both."""
    import statistics

    import torch

    seen, times = [], [0.5, 0.2, 0.1, 0.9, 0.3, 0.4, 0.7, 0.8, 0.6, 0.1]  # own, flipped, own, ...

    def forward(c):
        seen.append((c.gluon, c.linear_pass))
        q, k, v = kt.make_qkv(1, 2, 300, 64, torch.bfloat16, "bhnd", seed=5)[0]
        idx = torch.arange(2, dtype=torch.int32).expand(1, 2, 3, 2).contiguous()
        return sla2_kernels.sla2_forward(q, k, v, idx, 0.5, block_q=128, block_k=64, quant=False, layout="bhnd",
                                         config=c, sparse_out=False)

    b = object.__new__(bench.Bench)
    b.torch, b.time_ms = torch, lambda fn: (fn(), times.pop(0))[1]
    row = {}
    cfg = sla2_kernels.FwdConfig(4, 2, tma=True, linear_pass=True)
    got = b.gluon_flipped(row, cfg, forward)
    own, other = [0.5, 0.1, 0.3, 0.7, 0.6], [0.2, 0.9, 0.4, 0.8, 0.1]
    assert got == {"main_gluon_False": statistics.median(own), "main_gluon_True": statistics.median(other)}
    assert seen == [(False, False), (True, False)] * (1 + b.PAIR_ROUNDS)
    assert row["gluon_flipped_rel_o"] == 0.0 and row["gluon_flipped_max_dlse"] == 0.0

    # the Gluon kernel's loop flipped on the Gluon kernel, whatever cfg says of gluon
    loops = []
    times.extend([0.5, 0.2] * b.PAIR_ROUNDS)
    got = b.gluon_flipped(row, cfg, lambda c: (loops.append((c.gluon, c.gluon_overlap)), forward(c))[1],
                          "gluon_overlap")
    assert got == {"main_gluon_overlap_False": 0.5, "main_gluon_overlap_True": 0.2}
    assert loops == [(True, False), (True, True)] * (1 + b.PAIR_ROUNDS)
    assert row["gluon_overlap_flipped_rel_o"] == 0.0


def test_bench_train_times_the_skewed_selection_in_both_launch_orders(kt, monkeypatch):
    """bench_train.py's dk/dv step on a selection with a heavily selected key block a head, on the interpreter with a
    stand-in timer that runs the step: the default order takes the long lists first, the head-by-head one does not,
    dK and dV agree, and the launch order's factor is back afterwards."""
    import torch
    from sla2_kernels import backward, selection
    import bench_train

    orders = []
    lists = selection.key_block_lists

    def spy(*args, **kwargs):
        out = lists(*args, **kwargs)
        orders.append((out[0].diff(), out[2]))
        return out

    b = object.__new__(bench_train.Bench)
    b.torch, b.sk, b.bwd, b.fwd, b.selection = torch, sla2_kernels, backward, sla2_kernels.forward, selection
    b.bwd_cfg = sla2_kernels.BwdConfig(4, 2, 4, 3, qs=32, dq_tma=True, dkdv_tma=True, dkdv_register_kv=True)
    b.time_ms, b.PAIR_ROUNDS = (lambda fn: (fn(), 0.3)[1]), 1
    n, bq, bk = 700, bench_train.BLOCK_Q, bench_train.BLOCK_K
    nq, nk, topk = -(-n // bq), -(-n // bk), 1
    (q, k, v), _ = kt.make_qkv(1, 2, n, 64, torch.bfloat16, "bhnd")
    alpha = torch.full((1, 2, nq), 0.5)
    factor = selection.LONG_LIST_FACTOR
    row = {}
    monkeypatch.setattr(backward, "key_block_lists", spy)
    got = b.dkdv_skewed(q, k, v, torch.randn_like(q), alpha, nq, nk, topk, row)
    assert got == {"bwd_dkdv_skewed": 0.3, "bwd_dkdv_skewed_head_order": 0.3} and row["skewed_orders_equal"] is True
    assert selection.LONG_LIST_FACTOR == factor
    assert len(orders) == 4  # each order once for dK, dV, then once a round in turns
    (counts, first), (_, second) = orders[:2]
    assert [o[1].tolist() for o in orders[2:]] == [first.tolist(), second.tolist()]
    long = {int(f) for f in torch.nonzero(counts >= factor * nq * topk / nk).flatten()}
    assert int(counts.max()) == row["skewed_longest_list"] and {f // nk for f in long} == {0, 1}  # both heads'
    assert {int(f) for f in first[: len(long)]} == long  # first, across heads
    heads = [int(f) // nk for f in second]
    assert heads == sorted(heads)  # head by head


def test_bench_train_candidates_are_configurations_the_backward_accepts():
    """Every dq, dk/dv and linear candidate of bench_train.py --sweep builds a BwdConfig the way its sweep does (the
    register-operand choice exists only with the TMA dk/dv kernel, which BwdConfig enforces), and both operand
    choices are among the dk/dv candidates at the default's warps, stages and rows."""
    import bench_train

    C, B = sla2_kernels.BwdConfig, bench_train.Bench
    for w, stg, rows, tma in B.DQ_CANDIDATES + B.DQ_OS_CANDIDATES:
        C(w, stg, 8, 2, dq_rows=rows, dq_tma=tma)
    for w, stg, qs, tma, reg in B.DKDV_CANDIDATES:
        C(8, 2, w, stg, qs=qs, dkdv_tma=tma, dkdv_register_kv=reg)
    for rows, cols, w, stg in B.LINEAR_CANDIDATES:
        C(4, 2, 8, 2, linear_rows=rows, linear_cols=cols, linear_warps=w, linear_stages=stg)
    d = sla2_kernels.tuning.default_bwd_config(bench_train.BLOCK_Q, bench_train.BLOCK_K, 128)
    shape = (d.dkdv_warps, d.dkdv_stages, d.qs, d.dkdv_tma)
    assert {c[4] for c in B.DKDV_CANDIDATES if c[:4] == shape} == {True, False}
