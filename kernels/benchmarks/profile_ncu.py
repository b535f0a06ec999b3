"""One SLA2 forward and backward at a Wan shape, for Nsight Compute: where the kernels' time goes.

    ncu --profile-from-start off --clock-control none --section SpeedOfLight --section Occupancy \
        --section WarpStateStats --section MemoryWorkloadAnalysis python3 kernels/benchmarks/profile_ncu.py \
        [--shape 1.3b]

Everything runs once outside the profiled range first (compilation, autotuned fallbacks), then the profiler is
switched on for exactly one forward (precompute, router, linear state, main kernel) and one backward (its
linear state, dq, linear, the dh product and CSR lists, dk/dv): every kernel appears once in ncu's report.
Without ncu it just runs.
"""

from __future__ import annotations

import argparse

from bench_common import BLOCK_K, BLOCK_Q, SHAPES, import_kernels, topk_count


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="1.3b", choices=sorted(SHAPES))
    p.add_argument("--sparsity", type=float, default=0.97)
    p.add_argument("--quant", action="store_true", help="the low-bit forward")
    args = p.parse_args()

    import torch

    sk = import_kernels()
    from sla2_kernels import tuning

    B, H, N, D = SHAPES[args.shape]
    gen = torch.Generator(device="cuda").manual_seed(7)
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    eye = torch.eye(D, device="cuda").expand(H, D, D).contiguous()
    nq, nk = -(-N // BLOCK_Q), -(-N // BLOCK_K)
    alpha = 0.2 + 0.6 * torch.rand(1, H, nq, device="cuda", generator=gen)
    kw = dict(block_q=BLOCK_Q, block_k=BLOCK_K, layout="bhnd")
    topk = topk_count(nk, args.sparsity)

    def step():
        st = sk.precompute(k, v, block_k=BLOCK_K, layout="bhnd", quant=args.quant)
        _, idx = sk.router(q, k, eye, eye, topk=topk, kv_state=st, **kw)
        lin = sk.linear_state(idx, st, block_q=BLOCK_Q)
        keep = tuning.training_keeps_sparse_output(args.quant)  # the forward as a training step runs it
        o, lse, o_s = sk.sla2_forward(q, k, v, idx, alpha, quant=args.quant, kv_state=st, lin_state=lin,
                                      sparse_out=keep, **kw)
        return sk.sla2_backward(do, q, k, v, o, lse, idx, alpha, o_s=o_s if keep else None, quant=args.quant, **kw)

    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"profiled one forward + backward at {args.shape} {(B, H, N, D)}, topk {topk}/{nk}")


if __name__ == "__main__":
    main()
