"""Eager overhead of SLA2Attention and the low-bit precompute pass, on one GPU.

    python3 kernels/benchmarks/bench_eager.py [--out DIR] [--shapes 1.3b,14b] [--sparsities 0.97] [--budget-s 220]

First a correctness check at a small shape (B1 H2 N4000 D128, 97%), before anything is timed: the precompute
with quant=True against its PyTorch twin (reference.quantised_kv: scales, K̂ within one INT8 step, V̂
bytes), and SLA2Attention's eager output, bf16 and low-bit, against the blocked fp32 reference
(sla2_kernels.blocked_reference) on the module's own router selection. A failed check is recorded and printed
as a FAILED line; the timings still run.

Then per shape and sparsity, for SLA2Attention as a training step calls it (inputs [B, N, H, D] requiring grad,
autograd on, bf16 and quant=True):
  eager       median time of the module call (triton.testing.do_bench);
  graph       the same call replayed as a CUDA graph (do_bench_cudagraph): the GPU time without host gaps;
  host        host time to issue one call (no synchronisation inside the timed loop): above the graph time, the
              eager call is bound by the host;
  kernels     CUDA kernels one call runs (torch.profiler), with their names and GPU times;
and the precompute alone (bf16, and with quant: the pass, its totals and the quantising pass, in three launches),
next to the numbers measured before in docs/results.md (H200, 2026-12-03: eight launches with quant).
SDPA cuDNN on the dense problem is timed in the same process for the × cuDNN ratios.
The table is printed last; JSON goes to DIR/bench_eager.json (DIR: --out, default $OUT or kernels/benchmarks/results/).
"""

from __future__ import annotations

import json
import time

from bench_common import BLOCK_K, BLOCK_Q, SHAPES, BenchBase, arg_parser, parse_lists  # run as a script

# docs/results.md, Kernel speed (H200, torch 2.11, Triton 3.6, 2026-12-03, command A): the precompute (ms), bf16 and
# low-bit, with four and eight launches (the passes and torch's reductions of their partials).
BEFORE_MS = {"1.3b": {"precompute": 0.203, "precompute_quant": 0.373},
             "14b": {"precompute": 2.354, "precompute_quant": 3.547}}
# The module call at 1.3B, eager and as a graph (same card and date), bf16 and low-bit, with 20 and 24 launches
BEFORE_MODULE_MS = {"eager": (1.07, 1.87), "graph": (0.90, 1.348)}


class Bench(BenchBase):
    json_name = "bench_eager.json"

    def __init__(self, args):
        super().__init__(args, checks={}, before=dict(precompute=BEFORE_MS, module=BEFORE_MODULE_MS))
        from sla2_train.attention import SLA2Attention
        from sla2_train.attention import reference as ref

        from sla2_kernels import blocked_reference

        self.SLA2Attention, self.ref, self.br = SLA2Attention, ref, blocked_reference

    # ---------------------------------------------------------------- helpers
    def time_ms(self, fn, graph=False) -> float:
        fn()
        self.torch.cuda.synchronize()
        testing = self.triton.testing
        if graph:
            return float(testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))
        return float(testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))

    def host_ms(self, fn, calls=20) -> float:
        """Host time to issue one call: the loop is not synchronised, so the GPU runs behind it."""
        torch = self.torch
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        host = (time.perf_counter() - t) / calls * 1e3
        torch.cuda.synchronize()
        return host

    def kernels(self, fn) -> list[tuple[str, float]]:
        """(name, GPU ms) of the CUDA kernels one call runs (memsets and copies included), in launch order."""
        torch = self.torch
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        cuda = torch.autograd.DeviceType.CUDA
        return [(e.name, e.time_range.elapsed_us() / 1e3) for e in prof.events() if e.device_type == cuda]

    def module(self, H, D, sparsity, quant):
        return self.SLA2Attention(num_heads=H, head_dim=D, sparsity=sparsity, block_q=BLOCK_Q, block_k=BLOCK_K,
                                  quant=quant, backend="triton").cuda()

    def inputs(self, B, H, N, D, seed, grad=True):
        torch = self.torch
        gen = torch.Generator(device="cuda").manual_seed(seed)
        return [torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_(grad)
                for _ in range(3)]

    # ---------------------------------------------------------------- correctness first
    def check(self):
        """The new path against its references at a small shape; returns True when every check passes."""
        from sla2_kernels.constants import FP8_E4M3_MAX, MIN_SCALE

        torch, sk, ref = self.torch, self.sk, self.ref
        B, H, N, D, sparsity = 1, 2, 4000, 128, 0.97
        q, k, v = self.inputs(B, H, N, D, seed=11, grad=False)
        res = self.results["checks"]
        nk = -(-N // BLOCK_K)

        # precompute with quant against reference.quantised_kv
        st = sk.precompute(k, v, block_k=BLOCK_K, layout="bnhd", quant=True)
        kf, vf = (t.transpose(1, 2).float() for t in (k, v))
        k_hat, s_k, v_hat, s_v, _ = ref.quantised_kv(kf, vf, BLOCK_K)
        k8 = st.k8.view(B, H, nk * BLOCK_K, D)[:, :, :N].float()
        v8 = st.v8t.view(B, H, D, nk * BLOCK_K).float().transpose(-1, -2)[:, :, :N]
        step = (k8 - k_hat).abs()
        # s_v against the correctly rounded max|V| / 448, which the kernel's IEEE division (div_rn) gives: the
        # twin's own s_v is that on a CPU, but on a GPU torch divides by a Python scalar as a product with its
        # reciprocal (an ulp off in about half of all values). An fp32 quotient taken in float64 on the CPU and
        # rounded to fp32 is the correctly rounded one (53 ≥ 2·24 + 2 bits).
        s_v_exact = (vf.abs().amax(dim=-2).cpu().double() / FP8_E4M3_MAX).float().clamp_min(MIN_SCALE)
        res["s_v_mismatch"] = int((st.sv.view(B, H, D).cpu() != s_v_exact).sum())
        res["s_v_twin_max_rel"] = float(((st.sv.view(B, H, D) - s_v).abs() / s_v).max())
        res["s_k_max_rel"] = float(((st.sk.view(B, H, nk) - s_k).abs() / s_k).max())
        res["k8_max_step"] = float(step.max())
        res["k8_mismatch_frac"] = float((step > 0).float().mean())
        res["v8_mismatch_frac"] = float((v8 != v_hat).float().mean())
        # The GPU's FP8 conversion and the twin may round a tie to different neighbours: one e4m3 step at most
        # (3 mantissa bits: an eighth of the value, or the subnormal step 2^-9), in a small fraction of V̂.
        fp8_step = torch.maximum(v_hat.abs(), v8.abs()).mul(0.125).clamp_min(2.0 ** -9)
        res["v8_max_steps"] = float(((v8 - v_hat).abs() / fp8_step).max())
        ok = (res["s_v_mismatch"] == 0 and res["s_k_max_rel"] <= 1e-6 and res["k8_max_step"] <= 1
              and res["k8_mismatch_frac"] < 1e-3 and res["v8_mismatch_frac"] < 1e-3 and res["v8_max_steps"] <= 1)

        # SLA2Attention eager, bf16 and low-bit, against the blocked fp32 reference on the module's selection
        for quant, tol in ((False, 1e-2), (True, 1e-2)):
            attn = self.module(H, D, sparsity, quant)
            with torch.no_grad():
                attn.alpha.logit.uniform_(-1.5, 1.5)  # α per head in (0.18, 0.82): both branches count
                o = attn(q, k, v)
                topk = ref.topk_count(nk, sparsity)
                _, idx = torch.ops.sla2.router(q, k, attn.router.proj_q, attn.router.proj_k, BLOCK_Q, BLOCK_K, topk,
                                               "bnhd")
                alpha = attn.alpha(None).expand(B, H, -(-N // BLOCK_Q))
                qb, kb, vb = (t.transpose(1, 2) for t in (q, k, v))
                o_ref, _ = self.br.sla2_forward(qb, kb, vb, idx, alpha, BLOCK_Q, BLOCK_K, quant=quant)
            o = o.transpose(1, 2).float()
            rel = float((o - o_ref).abs().sum() / o_ref.abs().sum())
            res[f"module_rel_l1_{'lowbit' if quant else 'bf16'}"] = rel
            ok = ok and rel <= tol
        res["passed"] = bool(ok)
        print("CHECK", "passed" if ok else "FAILED", json.dumps(res), flush=True)
        del q, k, v, st
        return ok

    # ---------------------------------------------------------------- one shape
    def run_shape(self, shape_name):
        torch, sk = self.torch, self.sk
        B, H, N, D = SHAPES[shape_name]
        nk = -(-N // BLOCK_K)
        q, k, v = self.inputs(B, H, N, D, seed=1234)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        qb, kb, vb = (t.detach().transpose(1, 2).contiguous() for t in (q, k, v))  # as bench.py times them

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(qb, kb, vb)

        t_cudnn = self.safe(f"{shape_name} cudnn", lambda: self.time_ms(cudnn))
        pre = {}
        for quant, tag in ((False, "precompute"), (True, "precompute_quant")):
            pre[tag] = self.safe(f"{shape_name} {tag}", lambda: self.time_ms(
                lambda: sk.precompute(kb, vb, block_k=BLOCK_K, layout="bhnd", quant=quant)))
        for sparsity in self.args.sparsities:
            if self.left() < 30:
                self.results["errors"].append(f"budget: skipped {shape_name} sparsity {sparsity}")
                continue
            for quant in (False, True):
                attn = self.module(H, D, sparsity, quant)

                def call(attn=attn):
                    return attn(q, k, v)

                row = dict(shape=shape_name, B=B, H=H, N=N, D=D, sparsity=sparsity, quant=quant,
                           topk=self.ref.topk_count(nk, sparsity), t_cudnn=t_cudnn, **pre)
                row["eager"] = self.safe(f"{shape_name} eager quant={quant}", lambda: self.time_ms(call))
                row["graph"] = self.safe(f"{shape_name} graph quant={quant}", lambda: self.time_ms(call, graph=True))
                row["host"] = self.safe(f"{shape_name} host quant={quant}", lambda: self.host_ms(call))
                launched = self.safe(f"{shape_name} profile quant={quant}", lambda: self.kernels(call)) or []
                row["kernels"], row["kernel_ms"] = len(launched), launched
                if row["eager"] and row["graph"]:
                    row["eager_over_graph"] = row["eager"] / row["graph"]
                if t_cudnn and row["eager"]:
                    row["x_cudnn_eager"] = t_cudnn / row["eager"]
                if t_cudnn and row["graph"]:
                    row["x_cudnn_graph"] = t_cudnn / row["graph"]
                self.results["rows"].append(row)
                print(json.dumps({key: val for key, val in row.items() if key != "kernel_ms"}), flush=True)
                self.save()
                del attn
        del q, k, v, qb, kb, vb
        torch.cuda.empty_cache()

    # ---------------------------------------------------------------- table
    def table(self) -> str:
        R = self.results
        lines = [f"SLA2Attention eager vs CUDA graph, {R['device']}, torch {R['torch']}, triton {R['triton']}, "
                 f"{R['date']} (ms, median)"]
        c = R.get("checks", {})
        lines.append(f"correctness (B1 H2 N4000 D128, 97%): {'passed' if c.get('passed') else 'FAILED'} "
                     f"{ {k_: v_ for k_, v_ in c.items() if k_ != 'passed'} }")
        hdr = ("shape", "spars", "quant", "eager", "graph", "eag/gr", "host", "kernels", "x cuDNN", "precomp",
               "(rec.)", "pre+q", "(rec.)")
        lines.append(" ".join(f"{h:>8}" for h in hdr))

        def f(x, p=3):
            return f"{x:8.{p}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else f"{'-':>8}"

        for r in R["rows"]:
            before = BEFORE_MS.get(r["shape"], {})
            lines.append(" ".join([
                f"{r['shape']:>8}", f(r["sparsity"], 2), f"{'lowbit' if r['quant'] else 'bf16':>8}", f(r.get("eager")),
                f(r.get("graph")), f(r.get("eager_over_graph"), 2), f(r.get("host")), f"{r.get('kernels', 0):8d}",
                f(r.get("x_cudnn_eager"), 1), f(r.get("precompute")), f(before.get("precompute")),
                f(r.get("precompute_quant")), f(before.get("precompute_quant")),
            ]))
        rec = BEFORE_MODULE_MS
        lines.append(f"recorded at 1.3B with 20 / 24 launches a call (H200, 2026-12-03): eager {rec['eager']}, "
                     f"graph {rec['graph']} ms (bf16, low-bit)")
        for r in R["rows"][:2]:
            lines.append(f"kernels of one call, {r['shape']} {'lowbit' if r['quant'] else 'bf16'}: "
                         + ", ".join(f"{n.split('(')[0][:40]} {t:.3f}" for n, t in r.get("kernel_ms", [])))
        if R["errors"]:
            lines.append("errors: " + " | ".join(R["errors"]))
        return "\n".join(lines)


def main():
    p = arg_parser(__doc__.splitlines()[0], budget_s=220.0)
    p.set_defaults(sparsities="0.97")
    args = parse_lists(p.parse_args())
    b = Bench(args)
    b.safe("check", b.check)
    b.save()
    b.run_shapes(margin_s=40)
    b.save()
    print(b.table())


if __name__ == "__main__":
    main()
