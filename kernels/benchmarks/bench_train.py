"""Training benchmark of SLA2 on one GPU: attention forward+backward, and a Wan2.1-1.3B training step.

    python3 kernels/benchmarks/bench_train.py [--out DIR] [--shapes 1.3b,14b] [--sparsities 0.9,0.95,0.97] [--sweep]
                                              [--no-flex] [--flex-square] [--wan] [--wan-steps 5] [--budget-s 480]

Part 1, per shape (B, H, N, D): SDPA cuDNN and flash, forward and forward+backward; per sparsity: FlexAttention
forward+backward with a BlockMask of exactly the SLA2 selection (equal density; compiled once per shape), and
SLA2 bf16 and QAT (low-bit forward, bf16 backward) through the training path, the custom op sla2::attention with
the package's default configurations (sla2_kernels/tuning.py): forward (router + precompute + main kernel),
forward+backward (the same plus the backward), forward+backward as a CUDA graph, and its peak memory (allocated
above the inputs) against SDPA's; bf16 both with and without O_s kept for the backward (the two choices of
tuning.BF16_SPARSE_OUTPUT: keys `_os` / `_no_os` for the one that is not the default, and the dq kernel alone both
ways); then the backward alone and its parts (the K/V pass it recomputes, the CSR
key-block lists, its fp32 linear state, the dq kernel, the linear kernel, the dk/dv kernel). FLOPs, both
conventions (docs/method.md, FLOP conventions): dense-equivalent 14·B·H·N²·D / time for forward+backward
(4 forward, 10 backward: 2 + 2.5 × 4) and actual = the same with N² replaced by N·topk·b_k (the blocks
computed). --sweep times the candidate configurations of the linear, the dq and the dk/dv kernels (pointer and TMA tiles) at the first shape and the last sparsity; the
fastest of each makes the configuration that the backward-alone rows and their parts then run (passed as
`config=`; the op's forward+backward keeps the defaults, so a better pick becomes a default by an edit of
tuning.py). --flex-square
adds FlexAttention forward+backward on a random 128×128 block mask of the same density, whose backward compiles
where the 128×64 mask of our own selection does not (torch 2.11).

Part 2 (--wan): the Wan2.1-T2V-1.3B architecture (diffusers WanTransformer3DModel, random weights, bf16,
activation checkpointing), one AdamW step on one 81×480×832 latent ([1, 16, 21, 60, 104], N = 32760) with a
512-token text context: dense (SDPA cuDNN) vs SLA2 at 97% (the project's SLA2Attention through its Wan processor
and torch.library ops) without and with the low-bit forward. Step time (median of --wan-steps after one warm-up
step) and peak memory.

Times are medians of triton.testing.do_bench (ms; calls over 50 ms: the median of three event-timed calls). The
table is printed last; JSON goes to DIR/bench_train.json (DIR: --out, default $OUT or kernels/benchmarks/results/).
"""

from __future__ import annotations

import itertools
import json
import statistics
import time

from bench_common import (  # run as a script: a sibling module
    BLOCK_K, BLOCK_Q, SHAPES, BenchBase, arg_parser, flip_pair, parse_lists, topk_count,
)


WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN_LATENT = (16, 21, 60, 104)  # 81 frames 480×832 → N = 21·30·52 = 32760
WAN_TEXT = (512, 4096)


class Bench(BenchBase):
    json_name = "bench_train.json"

    def __init__(self, args):
        super().__init__(args, sweep=[], wan=[])
        from sla2_kernels import backward, forward, launch, selection, tuning

        self.bwd, self.fwd, self.launch, self.selection, self.tuning = backward, forward, launch, selection, tuning
        self.bwd_cfg = None  # the sweep's BwdConfig (None: the package's default)

    # ------------------------------------------------------------------ helpers
    def time_ms(self, fn, graph=False) -> float:
        torch = self.torch
        fn()
        torch.cuda.synchronize()
        if not graph:  # slow calls (dense attention at the 14B shape): median of 3 event-timed calls
            ts = []
            for _ in range(3):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                ts.append(a.elapsed_time(b))
                if ts[0] < 50:
                    break
            if ts[0] >= 50:
                return float(statistics.median(ts))
        if graph:
            return float(self.triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median"))
        return float(self.triton.testing.do_bench(fn, warmup=5, rep=40, return_mode="median"))

    def peak_mb(self, fn) -> float:
        torch = self.torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak / 2**20

    # ------------------------------------------------------------------ part 1
    def run_shape(self, shape_name):
        torch, sk = self.torch, self.sk
        B, H, N, D = SHAPES[shape_name]
        gen = torch.Generator(device="cuda").manual_seed(4321)
        q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
        eye = torch.eye(D, device="cuda").expand(H, D, D)
        proj_q = eye + 0.05 * torch.randn(H, D, D, device="cuda", generator=gen)
        proj_k = eye + 0.05 * torch.randn(H, D, D, device="cuda", generator=gen)
        nq, nk = -(-N // BLOCK_Q), -(-N // BLOCK_K)
        alpha = (0.2 + 0.6 * torch.rand(1, H, nq, device="cuda", generator=gen)).requires_grad_()
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        dense = 4.0 * B * H * N * N * D
        from torch.nn.attention import SDPBackend, sdpa_kernel

        base = {}
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            def fwd(backend=backend):
                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(*x)

            def fwd_bwd(backend=backend):
                with sdpa_kernel(backend):
                    o = torch.nn.functional.scaled_dot_product_attention(*x)
                    return torch.autograd.grad(o, x, do)

            base[f"sdpa_{name}_fwd"] = self.safe(f"{shape_name} {name} fwd", lambda: self.time_ms(fwd))
            base[f"sdpa_{name}_fwdbwd"] = self.safe(f"{shape_name} {name} fwd+bwd", lambda: self.time_ms(fwd_bwd))
            base[f"sdpa_{name}_peak_MB"] = self.safe(f"{shape_name} {name} mem", lambda: self.peak_mb(fwd_bwd))
            print(shape_name, name, {k_: v_ for k_, v_ in base.items() if name in k_}, flush=True)
        self.results.setdefault("baselines", {})[shape_name] = base
        flex = self.safe(f"{shape_name} flex compile", self.make_flex)

        kw = dict(block_q=BLOCK_Q, block_k=BLOCK_K, layout="bhnd")
        for sparsity in self.args.sparsities:
            if self.left() < 40:
                self.results["errors"].append(f"budget: skipped {shape_name} sparsity {sparsity}")
                continue
            topk = topk_count(nk, sparsity)
            row = dict(shape=shape_name, B=B, H=H, N=N, D=D, sparsity=sparsity, topk=topk, nk=nk, **base)
            _, idx = sk.router(q, k, proj_q, proj_k, topk=topk, **kw)
            T = {}
            # bf16 as SLA2Attention runs it now (tuning.BF16_SPARSE_OUTPUT), bf16 with the other choice (tag _os:
            # O_s kept, the dq loop's Δ from it; _no_os: not kept), QAT (O_s^q kept for dα)
            keep = self.tuning.training_keeps_sparse_output(False)
            for quant, tag, sparse_out in ((False, "", keep), (False, "_no_os" if keep else "_os", not keep),
                                           (True, "_qat", True)):
                def fwd(quant=quant, sparse_out=sparse_out):
                    _, i = sk.router(q, k, proj_q, proj_k, topk=topk, **kw)
                    # the training path: the custom op (forward state H_I, Z_I kept for its backward)
                    return torch.ops.sla2.attention(*x, i, alpha, BLOCK_Q, BLOCK_K, quant, "bhnd", sparse_out)[0]

                def fwd_bwd(quant=quant, sparse_out=sparse_out):
                    o = fwd(quant, sparse_out)
                    return torch.autograd.grad(o, [*x, alpha], do)

                with torch.no_grad():
                    T["fwd" + tag] = self.time_ms(fwd)
                T["fwdbwd" + tag] = self.time_ms(fwd_bwd)
                row["peak_MB" + tag] = self.safe(f"mem{tag}", lambda: self.peak_mb(fwd_bwd))
                T["fwdbwd_graph" + tag] = self.safe(f"{shape_name} {sparsity} graph{tag}",
                                                     lambda: self.time_ms(fwd_bwd, graph=True))
                o, lse, o_s = sk.sla2_forward(q, k, v, idx, alpha.detach(), quant=quant, sparse_out=sparse_out, **kw)
                T["bwd" + tag] = self.time_ms(lambda: sk.sla2_backward(
                    do, q, k, v, o, lse, idx, alpha.detach(), o_s=o_s if sparse_out else None, quant=quant,
                    config=self.bwd_cfg, **kw))
                self.record_resources(shape_name, self.launch.LAST_COMPILED)
            # parts of the (bf16) backward; the dq kernel also with Δ from the kept O_s (bwd_dq_os)
            o, lse, o_s = sk.sla2_forward(q, k, v, idx, alpha.detach(), quant=False, **kw)
            T["bwd_precompute"] = self.time_ms(lambda: sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd"))
            T["bwd_csr"] = self.time_ms(lambda: self.selection.key_block_lists(idx, nk))
            st = sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd")
            T["linear_state"] = self.time_ms(lambda: sk.linear_state(idx, st, block_q=BLOCK_Q))
            T["bwd_state"] = self.time_ms(lambda: self.backward_state(k, v, idx))
            p = self.prepared(do, q, k, v, o, lse, idx, alpha.detach(), self.backward_state(k, v, idx), self.bwd_cfg)
            T["bwd_dq"] = self.time_ms(lambda: self.bwd.run_dq_sparse(p))  # the dq kernel alone
            p_os = self.prepared(do, q, k, v, o, lse, idx, alpha.detach(), self.backward_state(k, v, idx),
                                 self.bwd_cfg, o_s=o_s)
            T["bwd_dq_os"] = self.time_ms(lambda: self.bwd.run_dq_sparse(p_os))
            self.record_resources(shape_name, {"dq_os": self.launch.LAST_COMPILED.get("dq")})
            for tag, prob in (("", p), ("_os", p_os)):  # the other dq kernel (Gluon or Triton), and Gluon's loops
                for field in self.DQ_FLIPS:
                    T.update(self.safe(f"{shape_name} {field}{tag}",
                                       lambda q_=prob, t_=tag, f_=field: self.dq_flipped(q_, row, t_, f_)) or {})
            del p_os
            T["bwd_linear"] = self.time_ms(lambda: self.bwd.run_linear(p))
            T["bwd_dkdv"] = self.time_ms(lambda: self.bwd.run_dkdv(p))  # includes the dh product and the CSR lists
            if p.cfg.dkdv_tma:  # the other choice of each dk/dv option, checked against this one's dK, dV
                for field in self.DKDV_FLIPS:
                    T.update(self.safe(f"{shape_name} {field}", lambda f=field: self.dkdv_flipped(p, row, f)) or {})
            T.update(self.safe(f"{shape_name} skewed selection", lambda: self.dkdv_skewed(q, k, v, do, alpha, nq, nk,
                                                                                          topk, row)) or {})
            if flex is not None and self.args.flex_square:
                T.update(self.safe(f"{shape_name} flex 128x128 {sparsity}",
                                   lambda: self.time_flex_square(flex, x, do, sparsity)) or {})
            if flex is not None and not self.args.no_flex:
                T.update(self.safe(f"{shape_name} flex {sparsity}", lambda: self.time_flex(flex, x, do, idx, nk)) or {})
                row["flex_peak_MB"] = self.safe("flex mem", lambda: self.peak_mb(
                    lambda: self.flex_fwd_bwd(flex, x, do, self.flex_mask(idx, nk, N))))
            row.update({f"t_{n}": t for n, t in T.items()})
            actual = 4.0 * B * H * N * topk * BLOCK_K * D
            timed = ("fwdbwd", "fwdbwd_qat", "fwdbwd_graph", "fwdbwd_graph_qat", "fwdbwd_os", "fwdbwd_graph_os",
                     "fwdbwd_no_os", "fwdbwd_graph_no_os", "flex_fwdbwd", "flex128_fwdbwd")
            for n in timed:
                if T.get(n):
                    row[f"dense_equiv_TFLOPs_{n}"] = 3.5 * dense / T[n] / 1e9
                    row[f"actual_TFLOPs_{n}"] = 3.5 * actual / T[n] / 1e9
            if base.get("sdpa_cudnn_fwdbwd"):
                for n in timed:
                    if T.get(n):
                        row[f"x_cudnn_{n}"] = base["sdpa_cudnn_fwdbwd"] / T[n]
            if T.get("bwd") and T.get("fwd"):
                row["bwd_over_fwd"] = T["bwd"] / T["fwd"]
            self.results["rows"].append(row)
            print(json.dumps(row), flush=True)
            self.save()
        del q, k, v, do, x
        torch.cuda.empty_cache()

    def backward_state(self, k, v, idx):
        return self.bwd.backward_linear_state(k, v, idx, block_q=BLOCK_Q, block_k=BLOCK_K, layout="bhnd")

    def prepared(self, do, q, k, v, o, lse, idx, alpha, lin, cfg, o_s=None):
        a3 = self.fwd.effective_alpha(alpha, q, idx, BLOCK_Q, BLOCK_K, "bhnd")
        return self.bwd.prepare(do, q, k, v, o, lse, idx, a3, block_q=BLOCK_Q, block_k=BLOCK_K, layout="bhnd",
                                h_i=lin[0], z_i=lin[1], keep=lin[2], o_s=o_s, config=cfg)

    # dq-kernel and dk/dv-kernel candidates, timed separately; the best of each makes self.bwd_cfg
    # (warps, stages, rows, tma): 64-row programs at 4 warps fit two to an SM (pointer kernel: 201 registers; TMA
    # kernel: 154, its Q and dO tiles stay in shared memory)
    DQ_CANDIDATES = ((4, 2, 64, True), (4, 3, 64, True), (8, 2, 0, True), (4, 1, 64, True), (4, 2, 64, False))
    # with Δ known (170 registers at 4 warps, sm_90a compile): 128-row programs at 4 warps, 8 warps at 3 stages
    DQ_OS_CANDIDATES = ((4, 2, 0, True), (8, 3, 0, True))
    # (warps, stages, qs, tma, register_kv): 32 query rows a step at 2 stages fit two 4-warp programs to an SM
    # (98.6 KB each); K and V as register operands take 16 KB less a stage
    DKDV_CANDIDATES = ((4, 3, 32, True, True), (4, 2, 32, True, True), (4, 2, 32, True, False), (4, 3, 32, True, False),
                       (8, 2, 64, True, False), (4, 2, 64, True, False), (4, 3, 32, False, False))
    # (rows, cols, warps, stages) of the linear kernel (H100, 2026-11-27, with a bf16 H_I: 155–229 registers,
    # 76–92 KB of shared memory; the 2-stage one 255 and 12 spills)
    LINEAR_CANDIDATES = ((32, 64, 4, 1), (32, 128, 4, 1), (16, 128, 4, 1), (16, 64, 4, 1), (32, 128, 8, 1),
                           (64, 128, 8, 1), (32, 64, 4, 2))

    def sweep(self, shape_name, sparsity):
        """Time the backward's candidate configurations at this shape and sparsity; keep the fastest of each kernel."""
        torch, sk, C = self.torch, self.sk, self.sk.BwdConfig
        B, H, N, D = SHAPES[shape_name]
        gen = torch.Generator(device="cuda").manual_seed(99)
        q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
        nq, nk = -(-N // BLOCK_Q), -(-N // BLOCK_K)
        eye = torch.eye(D, device="cuda").expand(H, D, D)
        _, idx = sk.router(q, k, eye, eye, topk=topk_count(nk, sparsity), block_q=BLOCK_Q, block_k=BLOCK_K,
                           layout="bhnd")
        alpha = 0.2 + 0.6 * torch.rand(1, H, nq, device="cuda", generator=gen)
        o, lse, o_s = sk.sla2_forward(q, k, v, idx, alpha, quant=False, block_q=BLOCK_Q, block_k=BLOCK_K,
                                      layout="bhnd")
        lin = self.backward_state(k, v, idx)
        best = {}
        # dq_os: the dq kernel with Δ from the kept O_s (one accumulator less: more programs an SM may fit)
        for kind, cands in (("linear", self.LINEAR_CANDIDATES), ("dq", self.DQ_CANDIDATES),
                            ("dq_os", self.DQ_CANDIDATES + self.DQ_OS_CANDIDATES), ("dkdv", self.DKDV_CANDIDATES)):
            for cand in cands:
                if self.left() < 60:
                    break
                if kind == "linear":
                    rows, cols, w, stg = cand
                    c = C(4, 2, 8, 2, linear_rows=rows, linear_cols=cols, linear_warps=w, linear_stages=stg)
                    p = self.prepared(do, q, k, v, o, lse, idx, alpha, lin, c)
                    self.bwd.run_dq_sparse(p)  # the linear kernel reads its Ds and adds into its dQ
                    fn = lambda p=p: self.bwd.run_linear(p)  # noqa: E731
                elif kind in ("dq", "dq_os"):
                    w, stg, rows, tma = cand
                    c = C(w, stg, 8, 2, dq_rows=rows, dq_tma=tma)
                    p = self.prepared(do, q, k, v, o, lse, idx, alpha, lin, c, o_s=o_s if kind == "dq_os" else None)
                    fn = lambda p=p: self.bwd.run_dq_sparse(p)  # noqa: E731
                else:
                    w, stg, qs, tma, reg = cand
                    c = C(8, 2, w, stg, qs=qs, dkdv_tma=tma, dkdv_register_kv=reg)
                    p = self.prepared(do, q, k, v, o, lse, idx, alpha, lin, c)
                    self.bwd.run_dq(p)
                    fn = lambda p=p: self.bwd.run_dkdv(p)  # noqa: E731
                t = self.safe(f"sweep {kind} {cand}", lambda: self.time_ms(fn))
                ck = self.launch.LAST_COMPILED.get("dq" if kind == "dq_os" else kind)
                res = dict(kind=kind, cand=cand, ms=t)
                if ck is not None:
                    res["regs_spills_smem"] = (int(ck.n_regs), int(ck.n_spills), int(ck.metadata.shared))
                self.results["sweep"].append(res)
                print("sweep", json.dumps(res), flush=True)
                if t is not None and (kind not in best or t < best[kind][0]):
                    best[kind] = (t, cand)
        dq = best.get("dq", (None, self.DQ_CANDIDATES[0]))[1]
        dkdv = best.get("dkdv", (None, self.DKDV_CANDIDATES[0]))[1]
        lin_cfg = best.get("linear", (None, self.LINEAR_CANDIDATES[0]))[1]
        tuned = C(dq[0], dq[1], dkdv[0], dkdv[1], qs=dkdv[2], dq_rows=dq[2], dq_tma=dq[3], dkdv_tma=dkdv[3],
                  dkdv_register_kv=dkdv[4], linear_rows=lin_cfg[0], linear_cols=lin_cfg[1],
                  linear_warps=lin_cfg[2], linear_stages=lin_cfg[3])
        self.bwd_cfg = tuned
        self.results["tuned_config"] = str(tuned)
        print("tuned", tuned, flush=True)
        del q, k, v, do, o, lse, o_s
        torch.cuda.empty_cache()
        self.save()

    # BwdConfig's dk/dv options that bench_train times flipped on every run (TMA dk/dv kernel only)
    DKDV_FLIPS = ("dkdv_register_kv",)

    def dkdv_flipped(self, p, row, field: str) -> dict:
        """The dk/dv step (run_dkdv) with the problem's configuration and with the BwdConfig option `field` flipped,
        timed in turns (keys bwd_<field>_<value>), and whether dK and dV come out bit for bit the same."""
        cfg = p.cfg
        value = getattr(cfg, field)
        flipped = cfg.flipped(field)

        def run(c):
            p.cfg = c
            self.bwd.run_dkdv(p)

        try:
            run(cfg)
            want = p.dk.clone(), p.dv.clone()
            run(flipped)
            row[f"{field}_flipped_equal"] = bool(self.torch.equal(p.dk, want[0]) and self.torch.equal(p.dv, want[1]))
            for name, got, ref in (("dk", p.dk, want[0]), ("dv", p.dv, want[1])):
                row[f"{field}_flipped_rel_{name}"] = float((got.float() - ref.float()).abs().sum()
                                                           / ref.float().abs().sum().clamp_min(1e-30))
            row[f"{field}_own"] = value
            t_own, t_flipped = self.time_pair(lambda: run(cfg), lambda: run(flipped))
        finally:
            p.cfg = cfg
        return {f"bwd_{field}_{value}": t_own, f"bwd_{field}_{not value}": t_flipped}

    # BwdConfig's dq options that bench_train times flipped on every run: the Gluon kernel, and its overlapped loop
    # (flipped on the Gluon kernel)
    DQ_FLIPS = ("dq_gluon", "dq_gluon_overlap")

    def dq_flipped(self, p, row, tag: str, field: str = "dq_gluon") -> dict:
        """The dq kernel (run_dq_sparse) with the problem's configuration and with the BwdConfig option `field`
        flipped (a loop of the Gluon kernel flipped on that kernel), timed in turns (keys bwd_dq<tag>_<option>_<value>,
        option: `field` less its dq_), with the flipped kernel's relative L1 difference in dQ and the row statistics
        and its compiled name."""
        own = p.cfg
        cfg, flipped = flip_pair(own, field, "dq_gluon")
        name = field.removeprefix("dq_")

        def run(c):
            p.cfg = c
            self.bwd.run_dq_sparse(p)

        def rel(a, b):
            return float((a.float() - b.float()).abs().sum() / b.float().abs().sum().clamp_min(1e-30))

        try:
            run(cfg)
            want = p.dq.clone(), p.rows.clone()
            run(flipped)
            row[f"dq{tag}_{name}_flipped_kernel"] = getattr(self.launch.LAST_COMPILED.get("dq"), "name", None)
            row[f"dq{tag}_{name}_flipped_rel_dq"] = rel(p.dq, want[0])
            row[f"dq{tag}_{name}_flipped_rel_rows"] = rel(p.rows.nan_to_num(posinf=0.0),
                                                          want[1].nan_to_num(posinf=0.0))
            t_own, t_flipped = self.time_pair(lambda: run(cfg), lambda: run(flipped))
        finally:
            p.cfg = own
        value = getattr(cfg, field)
        return {f"bwd_dq{tag}_{name}_{value}": t_own, f"bwd_dq{tag}_{name}_{not value}": t_flipped}

    # A selection with heavily selected key blocks, as learned attention has them (the testbed model at 97%: a
    # head's most selected key block in up to 60 of 68 query blocks' selections, scripts/testbed/
    # key_block_popularity.py): in every head one key block, chosen at random, is in SKEW_SHARE of the query
    # blocks' selections, the rest of each selection random.
    SKEW_SHARE = 0.75

    def dkdv_skewed(self, q, k, v, do, alpha, nq, nk, topk, row) -> dict:
        """The dk/dv step (run_dkdv) on that selection, in the default launch order and head by head
        (selection.launch_order with no list counted long), and whether dK, dV come out bit-equal."""
        torch, sk = self.torch, self.sk
        B, H, dev = q.shape[0], q.shape[1], q.device
        gen = torch.Generator(device=dev).manual_seed(77)
        scores = torch.rand(B, H, nq, nk, device=dev, generator=gen)
        sink = torch.randint(0, nk, (B, H, 1, 1), device=dev, generator=gen).expand(B, H, nq, 1)
        picked = (torch.rand(B, H, nq, 1, device=dev, generator=gen) < self.SKEW_SHARE).float()
        scores.scatter_add_(-1, sink, 2.0 * picked)
        idx = scores.topk(topk, dim=-1).indices.sort(dim=-1).values.to(torch.int32).contiguous()
        kw = dict(block_q=BLOCK_Q, block_k=BLOCK_K, layout="bhnd")
        o, lse, _ = sk.sla2_forward(q, k, v, idx, alpha.detach(), quant=False, **kw)
        p = self.prepared(do, q, k, v, o, lse, idx, alpha.detach(), self.backward_state(k, v, idx), self.bwd_cfg)
        self.bwd.run_dq(p)
        flat = torch.arange(B * H, device=dev).unsqueeze(1) * nk + idx.view(B * H, -1)
        row["skewed_longest_list"] = int(flat.flatten().bincount().max())
        factor = self.selection.LONG_LIST_FACTOR

        def run(f):
            self.selection.LONG_LIST_FACTOR = f
            self.bwd.run_dkdv(p)

        try:
            run(factor)
            want = p.dk.clone(), p.dv.clone()
            run(float("inf"))
            row["skewed_orders_equal"] = bool(torch.equal(p.dk, want[0]) and torch.equal(p.dv, want[1]))
            t = self.time_pair(lambda: run(factor), lambda: run(float("inf")))
        finally:
            self.selection.LONG_LIST_FACTOR = factor
        return {"bwd_dkdv_skewed": t[0], "bwd_dkdv_skewed_head_order": t[1]}

    # ------------------------------------------------------------------ FlexAttention
    # Flex's default backward tiles on the H100 (BLOCK_N1 = 128, 8 warps) do not fit a 64-key block mask, and
    # inductor skips 8-warp backward configs: explicit 4-warp tiles that divide (128, 64), tried in order.
    FLEX_OPTIONS = (
        {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_M1": 64, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 64,
         "num_warps": 4, "num_stages": 2},
        {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 32,
         "num_warps": 4, "num_stages": 2},
        {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 32, "BLOCK_M2": 32, "BLOCK_N2": 32,
         "num_warps": 4, "num_stages": 1},
    )
    FLEX_FWD_OPTIONS = {"BLOCK_M": 128, "BLOCK_N": 64}

    def flex_fwd_bwd(self, flex, x, do, bm):
        o = flex(*x, block_mask=bm, kernel_options=self.flex_opts)
        return self.torch.autograd.grad(o, x, do)

    def time_flex(self, flex, x, do, idx, nk):
        bm = self.flex_mask(idx, nk, x[0].shape[2])
        for opts in self.FLEX_OPTIONS if getattr(self, "flex_opts", "unset") == "unset" else (self.flex_opts,):
            self.flex_opts = opts
            try:
                self.flex_fwd_bwd(flex, x, do, bm)
                break
            except Exception as err:
                print("flex options", opts, "failed:", type(err).__name__, str(err).splitlines()[:1], flush=True)
        self.results["flex_kernel_options"] = self.flex_opts
        with self.torch.no_grad():
            t_f = self.time_ms(lambda: flex(*x, block_mask=bm, kernel_options=self.FLEX_FWD_OPTIONS))
        t_fb = self.time_ms(lambda: self.flex_fwd_bwd(flex, x, do, bm))
        return {"flex_fwd": t_f, "flex_fwdbwd": t_fb}

    def time_flex_square(self, flex, x, do, sparsity):
        """FlexAttention fwd+bwd on a random 128×128 block mask of the same block density: its backward compiles
        with inductor's default tiles, which the 128×64 mask of our own selection does not."""
        torch = self.torch
        from torch.nn.attention.flex_attention import BlockMask

        B, H, N, _ = x[0].shape
        nb = -(-N // 128)
        topk = topk_count(nb, sparsity)
        gen = torch.Generator(device="cuda").manual_seed(7)
        idx = torch.rand(B, H, nb, nb, device="cuda", generator=gen).argsort(-1)[..., :topk].sort(-1).values
        full_idx = torch.zeros(B, H, nb, nb, device="cuda", dtype=torch.int32)
        full_idx[..., :topk] = idx.to(torch.int32)
        zeros = torch.zeros(B, H, nb, device="cuda", dtype=torch.int32)
        bm = BlockMask.from_kv_blocks(zeros, torch.zeros_like(full_idx), torch.full_like(zeros, topk), full_idx,
                                      BLOCK_SIZE=(128, 128), seq_lengths=(N, N))

        def fwd_bwd():
            o = flex(*x, block_mask=bm)
            return torch.autograd.grad(o, x, do)

        fwd_bwd()  # compile
        with torch.no_grad():
            t_f = self.time_ms(lambda: flex(*x, block_mask=bm))
        return {"flex128_fwd": t_f, "flex128_fwdbwd": self.time_ms(fwd_bwd), "flex128_topk": topk,
                "flex128_density": topk / nb}

    # ------------------------------------------------------------------ part 2: Wan step
    def wan(self):
        torch = self.torch
        from diffusers import WanTransformer3DModel
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from sla2_train.models.attention_swap import SLA2Swap, set_attention_mode  # the adapter under test

        t_build = time.time()
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = WanTransformer3DModel(**WAN_1_3B)
        model = model.to(torch.bfloat16)
        model.enable_gradient_checkpointing()
        model.train()
        n_params = sum(p.numel() for p in model.parameters())
        self.results["wan_build_s"] = time.time() - t_build
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(1, *WAN_LATENT, device="cuda", dtype=torch.bfloat16, generator=g)
        target = torch.randn(1, *WAN_LATENT, device="cuda", dtype=torch.bfloat16, generator=g)
        enc = torch.randn(1, *WAN_TEXT, device="cuda", dtype=torch.bfloat16, generator=g)
        t = torch.tensor([500.0], device="cuda")

        def run_variant(name, opt):
            def step():
                opt.zero_grad(set_to_none=True)
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):  # the dense layers (cross-attention in SLA2 runs too)
                    out = model(hidden_states=x, timestep=t, encoder_hidden_states=enc, return_dict=False)[0]
                    loss = (out.float() - target.float()).square().mean()
                    loss.backward()
                opt.step()
                return loss.detach()

            step()  # warm-up: kernel compilation, optimizer state
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(self.args.wan_steps):
                t0 = time.perf_counter()
                loss = step()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            res = dict(variant=name, step_s=statistics.median(times), steps_s=times, loss=float(loss),
                       peak_GB=torch.cuda.max_memory_allocated() / 2**30, params=n_params)
            self.results["wan"].append(res)
            print("wan", json.dumps(res), flush=True)
            self.save()

        run_variant("dense_cudnn", torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True))
        SLA2Swap(sparsity=0.97, block_q=BLOCK_Q, block_k=BLOCK_K, alpha_mode="per_head").apply(model, WAN_LATENT)
        model.to(device="cuda", dtype=torch.bfloat16)
        for quant in (False, True):
            if self.left() < 30:
                self.results["errors"].append(f"budget: skipped Wan SLA2 quant={quant}")
                continue
            set_attention_mode(model, quant=quant)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, foreach=True)
            run_variant(f"sla2_97{'_qat' if quant else ''}", opt)
        if self.left() >= 30:
            # Selective checkpointing: SLA2's outputs saved instead of recomputed in the backward (QAT forward).
            from sla2_train.models.checkpointing import enable_checkpointing

            enable_checkpointing(model, "keep_attention")
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, foreach=True)
            run_variant("sla2_97_qat_keep_attention", opt)
        else:
            self.results["errors"].append("budget: skipped Wan SLA2 keep_attention")
        dense = self.results["wan"][0]["step_s"] if self.results["wan"] else None
        for r in self.results["wan"][1:]:
            r["speedup_vs_dense"] = dense / r["step_s"] if dense else None
        self.save()

    # ------------------------------------------------------------------ table
    def table(self) -> str:
        R = self.results
        lines = [f"SLA2 training benchmark, {R['device']}, torch {R['torch']}, triton {R['triton']}, {R['date']}"]

        def f(x, p=3):
            return f"{x:8.{p}f}" if isinstance(x, (int, float)) else f"{'-':>8}"

        def e(x):
            return f"{x:.1e}" if isinstance(x, (int, float)) else "-"

        hdr = ("shape", "spars", "cuDNN", "flash", "flex", "flex128", "fwd", "bwd", "fwd+bwd", "graph", "x cuDNN",
               "bwd/fwd", "fwd8", "f+b qat", "x cuDNN8", "linear", "dq", "dkdv", "pre+csr", "MB sla2", "MB cuDNN",
               "MB flex")
        lines.append("fwd+bwd (ms, median)")
        lines.append(" ".join(f"{h:>8}" for h in hdr))
        for r in R["rows"]:
            lines.append(" ".join([
                f"{r['shape']:>8}", f(r["sparsity"], 2), f(r.get("sdpa_cudnn_fwdbwd"), 2),
                f(r.get("sdpa_flash_fwdbwd"), 2), f(r.get("t_flex_fwdbwd")), f(r.get("t_flex128_fwdbwd")),
                f(r.get("t_fwd")), f(r.get("t_bwd")),
                f(r.get("t_fwdbwd")), f(r.get("t_fwdbwd_graph")), f(r.get("x_cudnn_fwdbwd_graph") or
                                                                    r.get("x_cudnn_fwdbwd"), 1),
                f(r.get("bwd_over_fwd"), 2), f(r.get("t_fwd_qat")), f(r.get("t_fwdbwd_qat")),
                f(r.get("x_cudnn_fwdbwd_graph_qat") or r.get("x_cudnn_fwdbwd_qat"), 1), f(r.get("t_bwd_linear")),
                f(r.get("t_bwd_dq")),
                f(r.get("t_bwd_dkdv")), f((r.get("t_bwd_precompute") or 0) + (r.get("t_bwd_csr") or 0)),
                f(r.get("peak_MB"), 0), f(r.get("sdpa_cudnn_peak_MB"), 0), f(r.get("flex_peak_MB"), 0),
            ]))
        for r in R["rows"]:
            other = "_no_os" if "t_fwdbwd_no_os" in r else "_os"
            lines.append(f"  {r['shape']} {r['sparsity']}: bf16 {'without' if other == '_no_os' else 'with'} O_s kept "
                         f"(the other choice of tuning.BF16_SPARSE_OUTPUT): fwd {f(r.get('t_fwd' + other))} "
                         f"fwd+bwd {f(r.get('t_fwdbwd' + other))} graph {f(r.get('t_fwdbwd_graph' + other))} "
                         f"bwd {f(r.get('t_bwd' + other))} MB {f(r.get('peak_MB' + other), 0)}; "
                         f"dq kernel with Δ from O_s {f(r.get('t_bwd_dq_os'))} against {f(r.get('t_bwd_dq'))}")
            for field in Bench.DKDV_FLIPS:
                if f"t_bwd_{field}_True" in r:
                    lines.append(f"  {r['shape']} {r['sparsity']}: dk/dv with BwdConfig.{field} True / False, timed "
                                 f"in turns: {f(r[f't_bwd_{field}_True'])} / {f(r.get(f't_bwd_{field}_False'))} "
                                 f"(the run's own: {r.get(field + '_own')}); dK, dV bit-equal: "
                                 f"{r.get(field + '_flipped_equal')} (relative L1 {e(r.get(field + '_flipped_rel_dk'))}"
                                 f" / {e(r.get(field + '_flipped_rel_dv'))})")
            for tag, field in itertools.product(("", "_os"), Bench.DQ_FLIPS):
                key = f"bwd_dq{tag}_{field.removeprefix('dq_')}"
                if f"t_{key}_True" in r:
                    lines.append(f"  {r['shape']} {r['sparsity']}: dq kernel{' with Δ from O_s' if tag else ''}, "
                                 f"BwdConfig.{field} True / False, timed in turns: "
                                 f"{f(r[f't_{key}_True'])} / {f(r.get(f't_{key}_False'))}; dQ relative L1 "
                                 f"{e(r.get(key.removeprefix('bwd_') + '_flipped_rel_dq'))}")
            if r.get("t_bwd_dkdv_skewed"):
                lines.append(f"  {r['shape']} {r['sparsity']}: dk/dv on a selection with one key block a head in "
                             f"{Bench.SKEW_SHARE:.0%} of the query blocks' (longest list "
                             f"{r.get('skewed_longest_list')}): {f(r['t_bwd_dkdv_skewed'])} against "
                             f"{f(r.get('t_bwd_dkdv_skewed_head_order'))} head by head (timed in turns); dK, dV "
                             f"bit-equal: {r.get('skewed_orders_equal')}")
        for s in R["sweep"]:
            lines.append(f"  sweep {s['kind']:>8} {s['cand']}: {s['ms']} ms  regs/spills/smem "
                         f"{s.get('regs_spills_smem')}")
        if R.get("tuned_config"):
            lines.append(f"  tuned: {R['tuned_config']}")
        if R["wan"]:
            lines.append("Wan2.1-1.3B training step (1×81×480×832, bf16, activation checkpointing, AdamW)")
            for w in R["wan"]:
                lines.append(f"  {w['variant']:>14}: {w['step_s']:.3f} s/step  peak {w['peak_GB']:.1f} GB"
                             + (f"  x{w['speedup_vs_dense']:.2f} vs dense" if w.get("speedup_vs_dense") else ""))
        if R["errors"]:
            lines.append("errors: " + " | ".join(R["errors"]))
        return "\n".join(lines)


def main():
    p = arg_parser(__doc__.splitlines()[0], budget_s=480.0)
    p.add_argument("--other-sparsities", default="", help="sparsities for the shapes after the first")
    p.add_argument("--no-flex", action="store_true",
                   help="skip FlexAttention fwd+bwd (torch 2.11's inductor cannot lower its backward for 128×64 blocks)")
    p.add_argument("--flex-square", action="store_true",
                   help="also time FlexAttention fwd+bwd on a random 128×128 block mask of the same density")
    p.add_argument("--wan", action="store_true")
    # 5, not 2: the median of two steps is their mean, and one slow step moved it by 7% (H100, 2026-11-27)
    p.add_argument("--wan-steps", type=int, default=5, help="timed steps per variant (their median is reported)")
    p.add_argument("--wan-first", action="store_true", help="run the Wan step right after the sweep")
    args = parse_lists(p.parse_args(), "other_sparsities")
    b = Bench(args)
    if args.sweep:
        b.safe("sweep", lambda: b.sweep(args.shapes[0], max(args.sparsities)))
    if args.wan and args.wan_first:
        b.safe("wan", b.wan)
    for i, shape in enumerate(args.shapes):
        if i == 1 and args.wan and not args.wan_first:  # the Wan step before the larger shapes
            b.safe("wan", b.wan) if b.left() > 60 else b.results["errors"].append("budget: skipped the Wan step")
        if b.left() < 60:
            b.results["errors"].append(f"budget: skipped shape {shape}")
            continue
        if i > 0 and args.other_sparsities:
            b.args.sparsities = args.other_sparsities
        b.safe(f"shape {shape}", lambda: b.run_shape(shape))
        b.save()
    if args.wan and not args.wan_first and len(args.shapes) < 2:
        b.safe("wan", b.wan) if b.left() > 60 else b.results["errors"].append("budget: skipped the Wan step")
    b.save()
    print(json.dumps(b.results["resources"]))
    print(b.table())


if __name__ == "__main__":
    main()
