"""Benchmark of the SLA2 forward kernels on one GPU, with the baselines measured in the same process.

    python3 kernels/benchmarks/bench.py [--out DIR] [--shapes 1.3b,14b] [--sparsities 0.9,0.95,0.97] [--sweep]
                                        [--budget-s 400]

Per shape: SDPA cuDNN and SDPA flash (dense); per sparsity: FlexAttention with a block mask of exactly the
SLA2 selection (equal density; BlockMask built once, flex compiled once per shape with fixed shapes), and
SLA2's parts timed separately and together: precompute (one pass over K, V), router (pooling, projections,
scores, torch Top-k), main kernel (bf16 and low-bit, with the pass over Q where the configuration runs one; the
pass also timed alone), main kernel without the linear branch (the sparse part alone), and the whole forward
(eager and as a CUDA graph); and dense cuDNN attention of every query against topk·b_k keys, the sparse part's
work in a dense kernel. Both FLOP conventions (docs/method.md, FLOP conventions): dense-equivalent
4·B·H·N²·D / time, and actual = 4·B·H·N·(topk·b_k)·D / time (the blocks computed).
--sweep times main-kernel and precompute configurations (warps, stages, TMA; the warps of the low-bit
quantisation passes) at the first shape and the last sparsity, then times the rows with the fastest (passed as
`config=`; the package's defaults are in sla2_kernels/tuning.py).
Also: a sanity check that FlexAttention and our sparse part agree (same mask), the GPU's copy bandwidth, bf16
matmul rate and rate of 16 KB tile reads from L2 by TMA (the ceilings; l2_read.py), and each kernel's registers /
spills / shared memory.
The table is printed last; JSON goes to DIR/bench.json (DIR: --out, default $OUT or kernels/benchmarks/results/).
Times are medians of triton.testing.do_bench (ms).
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial

from bench_common import (  # run as a script: a sibling module
    BLOCK_K, BLOCK_Q, SHAPES, BenchBase, arg_parser, flip_pair, parse_lists, topk_count,
)
from l2_read import l2_read_gbps


def _kernel_modules():
    from sla2_kernels import forward, launch, routing

    return forward, launch, routing


class Bench(BenchBase):
    def __init__(self, args):
        super().__init__(args, configs=[], precompute_configs=[])
        self.fwd_mod, self.launch, self.routing = _kernel_modules()
        # the forward as inference runs it: no backward to come, so neither kernel keeps its sparse output
        # (what SLA2Attention asks for under no_grad)
        self.forward = partial(self.sk.sla2_forward, sparse_out=False)
        self.pre_cfg = None  # PrecomputeConfig, and forward configurations by quant: the sweep's picks (None: defaults)
        self.fwd_cfg: dict = {}

    # ---------------------------------------------------------------- helpers
    def time_ms(self, fn, graph=False) -> float:
        testing = self.triton.testing
        fn()
        self.torch.cuda.synchronize()
        if graph:
            return float(testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))
        return float(testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))

    # ---------------------------------------------------------------- ceilings
    def ceilings(self):
        torch = self.torch
        x = torch.empty(1 << 28, device="cuda", dtype=torch.float32)  # 1 GiB
        y = torch.empty_like(x)
        t = self.time_ms(lambda: y.copy_(x))
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        tm = self.time_ms(lambda: a @ b)
        self.results["ceilings"] = dict(copy_GBps=2 * x.numel() * 4 / t / 1e6, bf16_matmul_TFLOPs=2 * 8192**3 / tm / 1e9)
        del x, y, a, b
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        self.results["ceilings"]["l2_tile_read_GBps"] = l2_read_gbps(self.time_ms, sms)
        print("ceilings", self.results["ceilings"], flush=True)

    # ---------------------------------------------------------------- one shape
    def run_shape(self, shape_name):
        torch, sk = self.torch, self.sk
        B, H, N, D = SHAPES[shape_name]
        gen = torch.Generator(device="cuda").manual_seed(1234)
        q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
        eye = torch.eye(D, device="cuda").expand(H, D, D)
        proj_q = eye + 0.05 * torch.randn(H, D, D, device="cuda", generator=gen)
        proj_k = eye + 0.05 * torch.randn(H, D, D, device="cuda", generator=gen)
        nq, nk = -(-N // BLOCK_Q), -(-N // BLOCK_K)
        alpha = 0.2 + 0.6 * torch.rand(B, H, nq, device="cuda", generator=gen)
        dense_flops = 4.0 * B * H * N * N * D
        base = {}
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
            def run(backend=backend):
                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
            base[name] = self.safe(f"{shape_name} {name}", lambda: self.time_ms(run))
            print(shape_name, name, base[name], flush=True)
        self.results.setdefault("baselines", {})[shape_name] = base

        flex = self.safe(f"{shape_name} flex compile", lambda: self.make_flex())
        kw = dict(block_q=BLOCK_Q, block_k=BLOCK_K, layout="bhnd")
        if self.args.sweep and shape_name == self.args.shapes[0]:
            sp = self.args.sparsities[-1]
            st16 = sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd")
            st8 = sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd", quant=True)
            _, idx = sk.router(q, k, proj_q, proj_k, topk=topk_count(nk, sp), kv_state=st16, **kw)
            self.safe("sweep", lambda: self.sweep(q, k, v, idx, alpha, st16, st8, kw, shape_name, sp))
            del st16, st8, idx
        for sparsity in self.args.sparsities:
            if self.left() < 30:
                self.results["errors"].append(f"budget: skipped {shape_name} sparsity {sparsity}")
                continue
            topk = topk_count(nk, sparsity)
            row = dict(shape=shape_name, B=B, H=H, N=N, D=D, sparsity=sparsity, topk=topk, nk=nk,
                       density=topk / nk, **base)
            pc = self.pre_cfg
            st16 = sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd", quant=False, config=pc)
            st8 = sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd", quant=True, config=pc)
            _, idx = sk.router(q, k, proj_q, proj_k, topk=topk, kv_state=st16, **kw)
            self.record_resources(f"{shape_name}", self.launch.LAST_COMPILED)
            T = {}
            T["precompute"] = self.time_ms(lambda: sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd", config=pc))
            T["precompute_quant"] = self.time_ms(
                lambda: sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd", quant=True, config=pc))
            T["router"] = self.time_ms(lambda: sk.router(q, k, proj_q, proj_k, topk=topk, kv_state=st16, **kw))
            T["router_alone"] = self.time_ms(lambda: sk.router(q, k, proj_q, proj_k, topk=topk, **kw))
            scores = sk.router(q, k, proj_q, proj_k, topk=topk, kv_state=st16, **kw)[0]
            T["topk_torch"] = self.time_ms(lambda: scores.topk(topk, dim=-1, sorted=False).indices.sort(dim=-1))
            T["topk"] = self.time_ms(lambda: self.routing.topk_indices(scores, topk))
            T.update(self.topk_sweep(scores, topk))
            T.update(self.pool_sweep(q, k, proj_q, proj_k, topk, st16, kw))
            T["linear_state"] = self.time_ms(lambda: sk.linear_state(idx, st16, block_q=BLOCK_Q))
            # the pass over Q before the TMA main kernels: Q̂ for the low-bit one (inside "main_lowbit" and
            # "sparse_only_lowbit"), and with FwdConfig.linear_pass the linear branch's O_l for either
            T["query_pass"] = self.time_ms(self.query_pass_fn(q, k, v, idx, alpha, st16, quant=False))
            T["query_pass_lowbit"] = self.time_ms(self.query_pass_fn(q, k, v, idx, alpha, st8, quant=True))
            T["quantize_q"] = self.time_ms(self.query_pass_fn(q, k, v, idx, alpha, st8, quant=True, linear=False))
            # h_j by TMA stores, the precompute's other variant, beside the rows' configuration
            tpc = dataclasses.replace(pc or sk.PrecomputeConfig(), tma_store=not (pc and pc.tma_store))
            for quant, tag in ((False, ""), (True, "_quant")):
                T[f"precompute{tag}_tma_store_{tpc.tma_store}"] = self.safe(
                    f"{shape_name} precompute{tag} tma_store={tpc.tma_store}", lambda: self.time_ms(
                        lambda: sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd", quant=quant, config=tpc)))
            for quant, st, tag in ((False, st16, ""), (True, st8, "_lowbit")):
                fc = self.fwd_cfg.get(quant)
                T["main" + tag] = self.time_ms(
                    lambda: self.forward(q, k, v, idx, alpha, quant=quant, kv_state=st, config=fc, **kw))
                self.record_resources(f"{shape_name}", self.launch.LAST_COMPILED)
                # the same configuration with the linear branch in the main kernel's epilogue instead of the pass
                # over Q (or the other way round)
                oc = fc or self.fwd_mod.default_fwd_config(BLOCK_Q, BLOCK_K, D, quant)
                oc = dataclasses.replace(oc, linear_pass=not oc.linear_pass)
                T[f"main{tag}_linear_pass_{oc.linear_pass}"] = self.safe(
                    f"{shape_name} main{tag} linear_pass={oc.linear_pass}", lambda: self.time_ms(
                        lambda: self.forward(q, k, v, idx, alpha, quant=quant, kv_state=st, config=oc, **kw)))
                for field in self.GLUON_FLIPS if not quant else ():  # the bf16 kernel's Gluon twin and its loops
                    T.update(self.safe(f"{shape_name} {field} flipped", lambda f=field: self.gluon_flipped(
                        row, oc, lambda c: self.forward(q, k, v, idx, alpha, quant=False, kv_state=st, config=c,
                                                        **kw), f)) or {})
                T["sparse_only" + tag] = self.time_ms(lambda: self.forward(
                    q, k, v, idx, alpha, quant=quant, kv_state=st, linear=False, config=fc, **kw))

                def whole(quant=quant, fc=fc):
                    s = sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd", quant=quant, config=pc)
                    _, i = sk.router(q, k, proj_q, proj_k, topk=topk, kv_state=s, **kw)
                    return self.forward(q, k, v, i, alpha, quant=quant, kv_state=s, config=fc, **kw)

                T["total" + tag] = self.time_ms(whole)
                T["total_graph" + tag] = self.safe(f"{shape_name} graph{tag}", lambda: self.time_ms(whole, graph=True))
                if not quant:  # the whole forward with the main kernel's Gluon option, and its loop, flipped
                    base_cfg = fc or self.fwd_mod.default_fwd_config(BLOCK_Q, BLOCK_K, D, False)
                    for field in self.GLUON_FLIPS:
                        gc = self.gluon_pair(base_cfg, field)[1]
                        T[f"total_graph_{field}_{getattr(gc, field)}"] = self.safe(
                            f"{shape_name} graph {field}={getattr(gc, field)}",
                            lambda gc=gc: self.time_ms(lambda: whole(False, gc), graph=True))
            if flex is not None:
                T["flex"] = self.safe(f"{shape_name} flex {sparsity}", lambda: self.time_flex(flex, q, k, v, idx, nk))
            # dense attention doing the sparse part's work: every query against topk·b_k keys (the same FLOPs and
            # keys per query, so the same short inner loop a program)
            kk, vk = k[:, :, : topk * BLOCK_K], v[:, :, : topk * BLOCK_K]

            def same_keys():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(q, kk, vk)

            T["cudnn_same_keys"] = self.safe(f"{shape_name} cudnn same keys {sparsity}",
                                             lambda: self.time_ms(same_keys))
            actual = 4.0 * B * H * N * topk * BLOCK_K * D
            row.update({f"t_{n}": t for n, t in T.items()})
            for n in ("main", "main_lowbit", "sparse_only", "sparse_only_lowbit", "total", "total_lowbit",
                      "total_graph", "total_graph_lowbit", "flex", "cudnn_same_keys"):
                t = T.get(n)
                if t:
                    row[f"dense_equiv_TFLOPs_{n}"] = dense_flops / t / 1e9
                    row[f"actual_TFLOPs_{n}"] = actual / t / 1e9
            if base.get("sdpa_cudnn"):
                row["cudnn_TFLOPs"] = dense_flops / base["sdpa_cudnn"] / 1e9
                for n in ("total", "total_lowbit", "total_graph", "total_graph_lowbit"):
                    if T.get(n):
                        row[f"speedup_vs_cudnn_{n}"] = base["sdpa_cudnn"] / T[n]
            self.results["rows"].append(row)
            print(json.dumps(row), flush=True)
            self.save()
            del st16, st8
        if flex is not None and self.args.shapes and shape_name == self.args.shapes[0]:
            self.safe("flex check", lambda: self.flex_check(flex, q, k, v, idx, alpha, nk, kw))
        del q, k, v
        torch.cuda.empty_cache()

    def query_pass_fn(self, q, k, v, idx, alpha, st, quant, linear=True, warps=None):
        """A call of the pass over Q (forward.query_pass) on buffers made once; warps None: the default."""
        torch = self.torch
        prob = self.fwd_mod.check_forward(q, k, v, idx, alpha, BLOCK_Q, BLOCK_K, "bhnd")
        lin = self.sk.linear_state(prob.idx, st, block_q=BLOCK_Q) if linear else None
        o, lse = torch.empty_like(q), torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
        kw = {} if warps is None else dict(warps=warps)
        return lambda: self.fwd_mod.query_pass(q, prob, o, lse, lin, st.kmean if quant else None, quant, **kw)

    TOPK_CANDIDATES = ((4, 4), (1, 1), (1, 2), (1, 4), (2, 2), (8, 8))  # (rows per program, warps)
    # (programs an SM, warps) of the router's pooling pass (tuning.ROUTER_POOL_PROGRAMS_PER_SM, ROUTER_POOL_WARPS)
    POOL_CANDIDATES = ((2, 4), (4, 4), (8, 2), (16, 2), (32, 2))

    def topk_sweep(self, scores, topk):
        """The radix Top-k at each (rows per program, warps), checked equal to torch's selection."""
        torch, sk = self.torch, self.sk
        want = scores.topk(topk, dim=-1).indices.sort(dim=-1).values.to(torch.int32)
        out = {}
        for r, w in self.TOPK_CANDIDATES:
            def run(r=r, w=w):
                return self.routing.topk_radix(scores, topk, r, w)
            got = self.safe(f"topk {r},{w}", run)
            if got is None:
                continue
            # random fp32 scores: ties are unlikely, so the selections must agree exactly
            ok = bool((got == want).all())
            out[f"topk_r{r}w{w}"] = self.time_ms(run) if ok else None
            print("topk sweep", scores.shape[-1], (r, w), out[f"topk_r{r}w{w}"], "ok" if ok else "MISMATCH", flush=True)
        return out

    def pool_sweep(self, q, k, proj_q, proj_k, topk, kv_state, kw):
        """The router (as a CUDA graph: its four launches without host gaps) at each (pooling programs an SM, warps),
        pooling Q alone (the precompute's state given) and Q with K (the router op's way), its scores checked against
        the defaults'."""
        torch, sk, routing = self.torch, self.sk, self.routing
        defaults = routing.ROUTER_POOL_PROGRAMS_PER_SM, routing.ROUTER_POOL_WARPS
        out = {}
        for tag, state in (("q", kv_state), ("qk", None)):
            def run(state=state):
                return sk.router(q, k, proj_q, proj_k, topk=topk, kv_state=state, **kw)[0]
            want = run()
            for per_sm, warps in self.POOL_CANDIDATES:
                routing.ROUTER_POOL_PROGRAMS_PER_SM, routing.ROUTER_POOL_WARPS = per_sm, warps
                try:
                    # μ_K's partials are summed in another order: equal to rounding
                    ok = bool(torch.allclose(run(), want, rtol=1e-5, atol=1e-6))
                    out[f"router_pool_s{per_sm}w{warps}_{tag}"] = self.time_ms(run, graph=True) if ok else None
                finally:
                    routing.ROUTER_POOL_PROGRAMS_PER_SM, routing.ROUTER_POOL_WARPS = defaults

        def ms(key):  # None: scores off the defaults' (reported, never timed)
            t = out.get(key)
            return "MISMATCH" if t is None else f"{t:.4f}"

        print("router pooling sweep (programs an SM, warps: ms as a graph, Q / Q and K):", ", ".join(
            f"{s},{w}: {ms(f'router_pool_s{s}w{w}_q')} / {ms(f'router_pool_s{s}w{w}_qk')}"
            for s, w in self.POOL_CANDIDATES), flush=True)
        return out

    # ---------------------------------------------------------------- config sweep
    def sweep(self, q, k, v, idx, alpha, st16, st8, kw, shape_name, sparsity):
        """Time main-kernel and precompute configurations; the fastest ones that compute the default arithmetic
        become the configurations of the table rows (self.fwd_cfg, self.pre_cfg). The low-bit sweep
        also times the non-default P̃ rounding (exact_max flipped: the other reference variant), for the
        table only: it is never chosen."""
        sk = self.sk
        Cfg = sk.FwdConfig
        default_exact_max = Cfg(4, 2).exact_max
        # linear_pass=True: the linear branch from the pass over Q, the main kernel only mixing it in
        candidates = {
            False: [Cfg(4, 2, tma=True), Cfg(4, 2, tma=True, linear_pass=True), Cfg(4, 3, tma=True, linear_pass=True),
                    Cfg(4, 2, tma=True, rows=64), Cfg(4, 2, tma=True, rows=64, maxnreg=128, linear_pass=True),
                    Cfg(4, 3, tma=True, rows=64, maxnreg=128, linear_pass=True), Cfg(8, 2, tma=True, maxnreg=128),
                    Cfg(8, 2, tma=True), Cfg(8, 3)],
            True: [Cfg(8, 3), Cfg(4, 2, tma=True), Cfg(4, 3, tma=True), Cfg(4, 3, tma=True, rows=64),
                   Cfg(4, 2, tma=True, rows=64), Cfg(4, 2, tma=True, rows=64, maxnreg=128),
                   Cfg(4, 2, tma=True, rows=64, maxnreg=128, linear_pass=True),
                   Cfg(4, 3, tma=True, rows=64, maxnreg=128),
                   Cfg(8, 2, tma=True, maxnreg=128), Cfg(8, 3, tma=True, maxnreg=128),
                   Cfg(8, 3, exact_max=not default_exact_max)],
        }
        best = {}
        for quant, st in ((False, st16), (True, st8)):
            for cfg in candidates[quant]:
                if self.left() < 60:
                    break
                name = ("sla2_fwd_lowbit" if quant else "sla2_fwd") + ("_tma" if cfg.tma else "")
                res = dict(shape=shape_name, sparsity=sparsity, quant=quant, linear=True,
                           exact_max=cfg.exact_max, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                           tma=cfg.tma, maxnreg=cfg.maxnreg, rows=cfg.rows, linear_pass=cfg.linear_pass)
                t = self.time_candidate(f"sweep {cfg} quant={quant}", name, res, self.results["configs"],
                                        lambda: self.forward(q, k, v, idx, alpha, quant=quant, kv_state=st, config=cfg,
                                                             **kw))
                default_arithmetic = cfg.exact_max == default_exact_max  # bf16 ignores exact_max: always
                if t is not None and default_arithmetic and (quant not in best or t < best[quant][0]):
                    best[quant] = (t, cfg)
        for quant, (t, cfg) in best.items():
            self.fwd_cfg[quant] = cfg
        self.results["chosen_configs"] = {str(qt): repr(c) for qt, (t, c) in best.items()}
        self.results["default_exact_max"] = default_exact_max
        PC = sk.PrecomputeConfig
        pbest = None
        for pc in (PC(None, 4, 2), PC(8, 4, 2), PC(None, 4, 3), PC(None, 8, 2), PC(None, 8, 3), PC(4, 8, 2),
                   PC(None, 4, 2, tma_store=True), PC(8, 4, 2, tma_store=True), PC(None, 4, 3, tma_store=True)):
            if self.left() < 60:
                break
            res = dict(kind="precompute", blocks_per_program=pc.blocks_per_program, num_warps=pc.num_warps,
                       num_stages=pc.num_stages, tma_store=pc.tma_store)
            t = self.time_candidate(f"precompute sweep {pc}", "kv_precompute", res, self.results["precompute_configs"],
                                    lambda: sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd", config=pc))
            if t is not None and (pbest is None or t < pbest[0]):
                pbest = (t, pc)
        # The low-bit precompute's quantisation pass, on top of the best precompute: its warps
        qbest = None
        for warps in (2, 4, 8) if pbest else ():
            if self.left() < 60:
                break
            pc = dataclasses.replace(pbest[1], quantize_warps=warps)
            t = self.time_candidate(f"quantise sweep {pc}", "quantize_kv", dict(kind="precompute_quant",
                                    quantize_warps=warps), self.results["precompute_configs"],
                                    lambda: sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd", quant=True, config=pc))
            if t is not None and (qbest is None or t < qbest[0]):
                qbest = (t, pc)
        # The pass over Q before the TMA main kernels, as the low-bit forward runs it (O_l and Q̂), at each warp
        # count (for the record: its warps are tuning.QUERY_PASS_WARPS, not a configuration the rows take)
        for warps in (4, 8):
            if self.left() < 60:
                break
            self.time_candidate(f"query pass sweep {warps} warps", "query_pass", dict(kind="query_pass", warps=warps),
                                self.results["precompute_configs"],
                                self.query_pass_fn(q, k, v, idx, alpha, st8, quant=True, warps=warps))
        if pbest:
            self.pre_cfg = qbest[1] if qbest else pbest[1]
            self.results["chosen_precompute"] = repr(self.pre_cfg)
        print("chosen", self.results.get("chosen_configs"), self.results.get("chosen_precompute"), flush=True)
        self.save()

    # FwdConfig's options of the bf16 main kernel that bench.py times flipped on every run
    GLUON_FLIPS = ("gluon", "gluon_overlap")

    @staticmethod
    def gluon_pair(cfg, field: str):
        """(cfg, cfg with the FwdConfig option `field` flipped), the pair a Gluon flip times: linear_pass undone in
        both (the Gluon kernel computes the linear branch in its epilogue), and a loop of the Gluon kernel
        (gluon_overlap) flipped on the Gluon kernel."""
        return flip_pair(dataclasses.replace(cfg, linear_pass=False), field, "gluon")

    def gluon_flipped(self, row, cfg, forward, field: str = "gluon") -> dict:
        """The bf16 main kernel with the FwdConfig option `field` as in cfg and flipped (gluon_pair), timed in
        turns (keys main_<field>_<value>), with the flipped kernel's relative L1 difference in o and largest in
        lse."""
        own, other = self.gluon_pair(cfg, field)
        o1, lse1, _ = forward(own)
        o2, lse2, _ = forward(other)
        row[f"{field}_flipped_rel_o"] = float((o2.float() - o1.float()).abs().sum() / o1.float().abs().sum())
        row[f"{field}_flipped_max_dlse"] = float((lse2 - lse1).abs().max())
        del o1, o2, lse1, lse2
        t_own, t_other = self.time_pair(lambda: forward(own), lambda: forward(other))
        return {f"main_{field}_{getattr(own, field)}": t_own, f"main_{field}_{getattr(other, field)}": t_other}

    def time_candidate(self, what, kernel, res, into, run):
        """One sweep candidate: its time (None if it failed), and the compiled kernel's registers, spills and
        shared memory, recorded in `res`, appended to `into` and printed."""
        t = res["t_ms"] = self.safe(what, lambda: self.time_ms(run))
        ck = self.launch.LAST_COMPILED.get(kernel)
        if t is not None and ck is not None:
            res.update(regs=int(ck.n_regs), spills=int(ck.n_spills), shared=int(ck.metadata.shared))
        into.append(res)
        print("sweep", json.dumps(res), flush=True)
        return t

    # ---------------------------------------------------------------- FlexAttention
    def time_flex(self, flex, q, k, v, idx, nk):
        bm = self.flex_mask(idx, nk, q.shape[2])
        opts = {"BLOCK_M": BLOCK_Q, "BLOCK_N": BLOCK_K}
        return self.time_ms(lambda: flex(q, k, v, block_mask=bm, kernel_options=opts))

    def flex_check(self, flex, q, k, v, idx, alpha, nk, kw):
        bm = self.flex_mask(idx, nk, q.shape[2])
        o_flex = flex(q, k, v, block_mask=bm, kernel_options={"BLOCK_M": BLOCK_Q, "BLOCK_N": BLOCK_K})
        o_ours = self.forward(q, k, v, idx, alpha, quant=False, linear=False, **kw)[0]
        rel = float((o_ours.float() - o_flex.float()).abs().sum() / o_flex.float().abs().sum())
        self.results["flex_vs_sparse_part_rel_l1"] = rel
        print("flex vs our sparse part, relative L1", rel, flush=True)

    # ---------------------------------------------------------------- table
    def table(self) -> str:
        lines = [f"SLA2 forward, {self.results['device']}, torch {self.results['torch']}, triton "
                 f"{self.results['triton']}, {self.results['date']} (ms, median)"]
        c = self.results.get("ceilings")
        if c:
            l2 = c.get("l2_tile_read_GBps", float("nan"))
            lines.append(f"ceilings: copy {c['copy_GBps']:.0f} GB/s, bf16 matmul {c['bf16_matmul_TFLOPs']:.0f} "
                         f"TFLOP/s, 16 KB tiles from L2 by TMA {l2:.0f} GB/s")
        hdr = ("shape", "spars", "topk", "cuDNN", "flash", "flex", "precomp", "router", "topk_ms", "lin_st", "qpass",
               "main", "sparse", "total", "graph", "x cuDNN", "precomp8", "qpass8", "main8", "sparse8", "total8",
               "graph8", "x cuDNN8", "TF sp act", "TF cuDNN")
        lines.append(" ".join(f"{h:>8}" for h in hdr))

        def f(x, p=3):
            return f"{x:8.{p}f}" if isinstance(x, (int, float)) else f"{'-':>8}"

        for r in self.results["rows"]:
            lines.append(" ".join([
                f"{r['shape']:>8}", f(r["sparsity"], 2), f"{r['topk']:8d}", f(r.get("sdpa_cudnn"), 2),
                f(r.get("sdpa_flash"), 2), f(r.get("t_flex")), f(r.get("t_precompute")), f(r.get("t_router")), f(r.get("t_topk")),
                f(r.get("t_linear_state")), f(r.get("t_query_pass")),
                f(r.get("t_main")), f(r.get("t_sparse_only")), f(r.get("t_total")), f(r.get("t_total_graph")),
                f(r.get("speedup_vs_cudnn_total_graph"), 1), f(r.get("t_precompute_quant")),
                f(r.get("t_query_pass_lowbit")),
                f(r.get("t_main_lowbit")),
                f(r.get("t_sparse_only_lowbit")), f(r.get("t_total_lowbit")), f(r.get("t_total_graph_lowbit")),
                f(r.get("speedup_vs_cudnn_total_graph_lowbit"), 1), f(r.get("actual_TFLOPs_sparse_only"), 0),
                f(r.get("cudnn_TFLOPs"), 0),
            ]))
        for r in self.results["rows"]:
            if r.get("t_cudnn_same_keys"):
                lines.append(f"{r['shape']} {r['sparsity']}: dense cuDNN on topk·b_k = {r['topk'] * BLOCK_K} keys "
                             f"a query (the sparse part's work) {r['t_cudnn_same_keys']:.3f} ms, "
                             f"{r['actual_TFLOPs_cudnn_same_keys']:.0f} TFLOP/s; sparse part bf16 "
                             f"{f(r.get('actual_TFLOPs_sparse_only'), 0).strip()}, low-bit (with Q's quantisation) "
                             f"{f(r.get('actual_TFLOPs_sparse_only_lowbit'), 0).strip()}")
        for r in self.results["rows"]:
            other = {n[2:]: t for n, t in r.items()
                     if n.startswith("t_") and any(s in n for s in ("_tma_store_", "_linear_pass_", "_gluon"))}
            if other:
                lines.append(f"{r['shape']} {r['sparsity']}, the other variant of the rows' configurations: "
                             + ", ".join(f"{n} {f(t).strip()}" for n, t in other.items())
                             + "".join(f"; {n} {r[n]:.1e}" for n in r if n.endswith("_flipped_rel_o")))
        if self.results["configs"]:
            lines.append("main-kernel configs (warps, stages, exact_max, tma, maxnreg, rows, linear_pass): ms "
                         "[regs/spills/shared]")
            for c in self.results["configs"]:
                lines.append(f"  quant={c['quant']!s:5} ({c['num_warps']},{c['num_stages']},{c.get('exact_max')},"
                             f"{c.get('tma')},{c.get('maxnreg')},{c.get('rows')},{c.get('linear_pass')}): "
                             f"{c['t_ms'] if c['t_ms'] is None else round(c['t_ms'], 4)} "
                             f"[{c.get('regs')}/{c.get('spills')}/{c.get('shared')}]")
            lines.append(f"chosen (fastest with exact_max={self.results.get('default_exact_max')}, the default): "
                         f"{self.results.get('chosen_configs')} {self.results.get('chosen_precompute')}")
        if self.results["precompute_configs"]:
            lines.append("precompute configs (blocks/program, warps, stages, h by TMA store; low bit: the quantisation "
                         "passes' warps): ms [regs/spills/shared]")

            def label(c):
                if c["kind"] == "query_pass":
                    return f"pass over Q (low bit), {c['warps']} warps"
                if c["kind"] == "precompute_quant":
                    return f"low bit, quantise {c['quantize_warps']} warps"
                return f"({c['blocks_per_program']},{c['num_warps']},{c['num_stages']},{c.get('tma_store')})"
            lines.append("  " + "  ".join(
                f"{label(c)}: {c['t_ms'] if c['t_ms'] is None else round(c['t_ms'], 4)} "
                f"[{c.get('regs')}/{c.get('spills')}/{c.get('shared')}]" for c in self.results["precompute_configs"]))
        if self.results["errors"]:
            lines.append("errors: " + " | ".join(self.results["errors"]))
        return "\n".join(lines)


def main():
    args = parse_lists(arg_parser(__doc__.splitlines()[0], budget_s=400.0).parse_args())
    b = Bench(args)
    b.safe("ceilings", b.ceilings)
    b.run_shapes(margin_s=60)
    b.save()
    print(json.dumps(b.results["resources"], indent=None))
    print(b.table())


if __name__ == "__main__":
    main()
