"""Host time of one SLA2Attention call and of its parts: where an eager call spends its time before the GPU runs it.

    python3 kernels/benchmarks/bench_host.py [--out DIR] [--shape 1.3b] [--calls 50] [--profile 50]
    python3 kernels/benchmarks/bench_host.py --skip-launches     # any machine, no GPU needed

On a GPU, per call, with no synchronisation inside the timed loop (bf16 and low-bit): the SLA2Attention call with
autograd on and under no_grad, on its eager path (sla2_train/attention/direct.py) and through the custom ops (as
torch.compile takes it), the router and attention ops, sla2_kernels.router and sla2_forward called
directly, and for scale one trivial Triton launch and one torch.empty; whether any of the module's calls
synchronises (torch.cuda.set_sync_debug_mode); with --profile N a cProfile of N module calls (by own time).
Where the host takes longer than the GPU (bench_eager.py's graph time), the eager call is bound by the host.

--skip-launches runs the same host code on CPU tensors with every Triton launch (launch.run) and the H_I product
replaced by nothing, at N 2048 (the host code does not depend on N), and counts the launches a call makes: what
our Python and torch's wrappers cost without the launches. The replacements are process-wide, so that mode
runs nothing else. JSON goes to DIR/bench_host.json (DIR: --out, default $OUT or kernels/benchmarks/results/).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import datetime
import io
import json
import os
import pathlib
import platform
import pstats
import time
import warnings

import triton
import triton.language as tl

from bench_common import BLOCK_K, BLOCK_Q, RESULTS, SHAPES, import_kernels, topk_count  # run as a script

SPARSITY = 0.97


@triton.jit
def _add_one(x_ptr, BLOCK: tl.constexpr):
    """A trivial kernel: the floor of one Triton launch's host time."""
    i = tl.arange(0, BLOCK)
    tl.store(x_ptr + i, tl.load(x_ptr + i) + 1)


def skip_launches(torch) -> collections.Counter:
    """Replace every launch by a count of it and let the kernels' host code take CPU tensors; returns the counter."""
    from sla2_kernels import checks, gluon_tiles, launch, layouts
    from sla2_train.attention import ops

    counts = collections.Counter()
    launch.run = lambda name, kernel, grid, *args, **kwargs: counts.update([name])
    empty = torch.empty
    torch.bmm = lambda a, b: empty(a.shape[0], a.shape[1], b.shape[2], dtype=b.dtype)  # H_I's product
    layouts.tma_hardware = lambda device: True  # the TMA kernels' host code, as on a Hopper GPU
    gluon_tiles.hopper = lambda device: True  # and the Gluon kernels' where the defaults take them
    checks.interpreting = lambda: True  # the kernels' device check lets CPU tensors through
    checks.check_index_values = lambda *args: None  # no selection is computed: nothing to check
    torch.library.register_kernel("sla2::router", "cpu", ops.router_kernels)
    torch.library.register_kernel("sla2::attention", "cpu", ops.attention_kernels)
    return counts


def host_ms(torch, fn, calls: int, repeats: int) -> float:
    """Best over `repeats` of the mean host time of `calls` calls, with no synchronisation inside the loop."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls * 1e3)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return best


def python_loop_s() -> float:
    """A plain Python loop of 3 M additions inside a function: how fast this host runs Python, to compare hosts
    (only with this figure: the same loop at module level, on globals, takes about three times as long)."""
    t, s = time.perf_counter(), 0
    for i in range(3_000_000):
        s += i
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or str(RESULTS))
    p.add_argument("--shape", default="1.3b", choices=sorted(SHAPES))
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", type=int, default=0, help="cProfile this many module calls (0: none)")
    p.add_argument("--skip-launches", action="store_true", help="CPU tensors, no launches (see the docstring)")
    args = p.parse_args()

    import torch

    if args.skip_launches:  # the GPU's host path, not the interpreter's (sla2_kernels would choose it without CUDA)
        os.environ["TRITON_INTERPRET"] = "0"
    sk = import_kernels()
    from sla2_kernels import tuning
    from sla2_train.attention import SLA2Attention, backend, direct

    counts = skip_launches(torch) if args.skip_launches else None
    choose_path = backend.op_path
    device = "cpu" if args.skip_launches else "cuda"
    B, H, N, D = SHAPES[args.shape]
    if args.skip_launches:
        N = 2048
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, N, H, D, device=device, dtype=torch.bfloat16, generator=g).requires_grad_(True)
               for _ in range(3))
    qd, kd, vd = (t.detach() for t in (q, k, v))
    res = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               device=torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
               torch=torch.__version__, triton=triton.__version__, shape=[B, H, N, D], sparsity=SPARSITY,
               skip_launches=args.skip_launches, python_loop_3M_s=python_loop_s(), rows={})
    ms = lambda fn: host_ms(torch, fn, args.calls, args.repeats)  # noqa: E731
    for quant in (False, True):
        attn = SLA2Attention(num_heads=H, head_dim=D, sparsity=SPARSITY, block_q=BLOCK_Q, block_k=BLOCK_K,
                             quant=quant, backend="auto").to(device)
        pq, pk = attn.router.proj_q.detach(), attn.router.proj_k.detach()
        nq, nk = -(-N // BLOCK_Q), -(-N // BLOCK_K)
        topk = topk_count(nk, SPARSITY)
        idx = torch.arange(topk, device=device, dtype=torch.int32).expand(B, H, nq, topk).contiguous()
        alpha = torch.full((B, H, 1), 0.5, device=device)
        call = lambda: attn(q, k, v)  # noqa: E731
        row = {}
        # through the custom ops (as torch.compile and selective checkpointing take the call), then the eager
        # CUDA path (backend.op_path: the kernels without the dispatcher), forced alike in both modes; the
        # counts, the synchronisation check and the profile below take the eager path
        for name, path in (("module_via_ops", (torch.ops.sla2.router, torch.ops.sla2.attention)),
                           ("module", (direct.router, direct.attention))):
            backend.op_path = lambda q, path=path: path
            row[name] = ms(call)
            with torch.no_grad():
                row[name + "_no_grad"] = ms(call)
        row["op_router"] = ms(lambda: torch.ops.sla2.router(qd, kd, pq, pk, BLOCK_Q, BLOCK_K, topk, "bnhd"))
        row["kernels_router"] = ms(lambda: sk.router(qd, kd, pq, pk, block_q=BLOCK_Q, block_k=BLOCK_K, topk=topk,
                                                     layout="bnhd"))
        keep = tuning.training_keeps_sparse_output(quant)  # the forward as a training step runs it
        row["op_attention"] = ms(lambda: torch.ops.sla2.attention(qd, kd, vd, idx, alpha, BLOCK_Q, BLOCK_K, quant,
                                                                  "bnhd", keep))
        row["kernels_forward"] = ms(lambda: sk.sla2_forward(qd, kd, vd, idx, alpha, block_q=BLOCK_Q,
                                                            block_k=BLOCK_K, quant=quant, layout="bnhd",
                                                            sparse_out=keep))
        if counts is not None:
            counts.clear()
            call()
            row["launches_per_call"] = dict(counts)
        else:
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                call()
            torch.cuda.set_sync_debug_mode(0)
            row["synchronising_calls"] = [str(w.message)[:200] for w in caught if "synchroniz" in str(w.message)]
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.profile):
                call()
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
            row["profile_by_own_time"] = text.getvalue()
        res["rows"]["lowbit" if quant else "bf16"] = row
    backend.op_path = choose_path
    if device == "cuda":
        x = torch.zeros(1024, device="cuda")
        res["trivial_triton_launch"] = ms(lambda: _add_one[(1,)](x, BLOCK=1024))
        res["torch_empty"] = ms(lambda: torch.empty(1024, device="cuda"))

    print(f"host time a call, ms ({res['device']}, torch {res['torch']}, triton {res['triton']}, {res['date']}; "
          f"{'launches skipped, ' if args.skip_launches else ''}shape {res['shape']}; Python loop of 3 M additions "
          f"{res['python_loop_3M_s']:.3f} s)")
    names = [n for n in res["rows"]["bf16"] if isinstance(res["rows"]["bf16"][n], float)]
    print(f"{'':>8}" + "".join(f"{n:>{len(n) + 2}}" for n in names))
    for prec, row in res["rows"].items():
        print(f"{prec:>8}" + "".join(f"{row[n]:{len(n) + 2}.3f}" for n in names))
        for extra in ("launches_per_call", "synchronising_calls"):
            if extra in row:
                print(f"  {prec} {extra}: {row[extra]}")
    for extra in ("trivial_triton_launch", "torch_empty"):
        if extra in res:
            print(f"{extra}: {res[extra] * 1e3:.1f} µs")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_host.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
