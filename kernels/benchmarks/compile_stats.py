"""The package's main kernels compiled for a Hopper GPU on any machine, GPU or not: registers and stack (spilled
bytes) a thread, shared memory, programs an SM, and each loop of the SASS with its instruction counts by kind.
Triton's own ptxas and cuobjdump do the work, so the numbers are those of the GPU's compile with the same Triton.

    python kernels/benchmarks/compile_stats.py [--kernels fwd,dq,...] [--arch 90] [--out DIR]

Each kernel is compiled as the package launches it at the Wan shapes: b_q 128, b_k 64, head_dim 128, bf16, the
default configurations of tuning.py, and the scalar arguments of Wan2.1-1.3B (N 32760, H 12, bhnd), on which Triton
specialises (a value of 1 becomes a constant, a multiple of 16 is marked as such). Writes compile_stats.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

from bench_common import BLOCK_K, BLOCK_Q, RESULTS, SHAPES

HEAD_DIM = SHAPES["1.3b"][3]
# Hopper's per-SM limits, for programs an SM: registers, shared memory (bytes; the driver keeps 1 KB a program)
SM_REGISTERS, SM_SHARED, SHARED_RESERVED, SM_WARPS = 65536, 233472, 1024, 64
H100_SMS = 132  # SXM; the launch's grid sizes depend on it only through the precompute's split
# SASS opcodes counted per loop: tensor-core products, spills, the loads and stores of tiles, barriers, exp2
COUNTED = ("HGMMA", "HMMA", "IMMA", "QGMMA", "IGMMA", "LDL", "STL", "UTMALDG", "UTMASTG", "LDGSTS", "LDG", "STG",
           "LDS", "STS", "LDSM", "BAR", "SYNCS", "SHFL", "MUFU")
MIN_LOOP_BYTES = 0x40  # backward branches shorter than this are waits (barrier polls), not loops


@dataclass(frozen=True)
class Ptr:
    dtype: str  # Triton's name: bf16, fp32, i32, ...


@dataclass(frozen=True)
class Desc:
    dtype: str
    block: tuple
    gluon: bool = False  # a Gluon descriptor: its type names the shared-memory layout (the kernel's buffers)

    def type_name(self) -> str:
        name = f"tensordesc<{self.dtype}[{', '.join(map(str, self.block))}]"
        if not self.gluon:
            return name + ">"
        from triton.experimental.gluon import language as gl

        layout = gl.NVMMASharedLayout.get_default_for(list(self.block), getattr(gl, GLUON_DTYPES[self.dtype]))
        return f"{name},{layout!r}>"


GLUON_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def wan_ints():
    """The scalar arguments' values at Wan2.1-1.3B, bhnd (contiguous [B, H, N, D]); α a contiguous [B, H, nq]."""
    from sla2_kernels.kv_state import key_block_runs
    from sla2_kernels.layouts import NK_ALIGN
    from sla2_kernels.launch import cdiv

    B, H, N, D = SHAPES["1.3b"]
    nq, nk = cdiv(N, BLOCK_Q), cdiv(N, BLOCK_K)
    nk_pad = cdiv(nk, NK_ALIGN) * NK_ALIGN
    per_split, nsplit = key_block_runs(nk_pad, B * H, H100_SMS)  # the precompute's runs, as on an H100
    strides = dict(b=H * N * D, h=N * D, n=D, d=1)
    return dict(N=N, H=H, NQ=nq, NK=nk, NK_PAD=nk_pad, TOPK=15,  # 15 of 512 key blocks: 97%
                BLOCKS_PER_SPLIT=per_split, NSPLIT=nsplit, sab=H * nq, sah=nq, saq=1,
                **{f"s{t}{k}": v for t in ("q", "k", "v", "do", "dq", "os") for k, v in strides.items()})


def specs():
    """name -> (kernel, {argument: Ptr | Desc | int | float}, constexprs, compile options), as the package launches
    each kernel by default (forward.run_forward, kv_state.build_state, backward.run_*)."""
    from sla2_kernels import sla2_bwd_dq_gluon as dq_gluon
    from sla2_kernels import sla2_fwd_gluon as fwd_gluon
    from sla2_kernels import tuning
    from sla2_kernels.linear_precompute import kv_precompute_kernel
    from sla2_kernels.query_pass import query_pass_kernel
    from sla2_kernels.sla2_bwd import sla2_bwd_linear_kernel
    from sla2_kernels.sla2_bwd_tma import sla2_bwd_dkdv_tma_kernel, sla2_bwd_dq_tma_kernel
    from sla2_kernels.sla2_fwd_lowbit_tma import sla2_fwd_lowbit_tma_kernel
    from sla2_kernels.sla2_fwd_tma import sla2_fwd_tma_kernel

    bq, bk, D, ep = BLOCK_Q, BLOCK_K, HEAD_DIM, tuning.EPI_CHUNKS
    ints = wan_ints()
    f32, i32, bf16 = Ptr("fp32"), Ptr("i32"), Ptr("bf16")

    def tile(rows, dtype="bf16", cols=D):
        return Desc(dtype, (1, 1, rows, cols))

    def options(num_warps, num_stages=1, maxnreg=None):
        return dict(num_warps=num_warps, num_stages=num_stages, **({"maxnreg": maxnreg} if maxnreg else {}))

    out = {}
    fwd = tuning.default_fwd_config(bq, bk, D, quant=False)
    bm = fwd.rows or bq
    epilogue = dict(qc_desc=tile(bm, cols=D // ep), h_desc=Desc("bf16", (1, D // ep, D)))
    out["fwd"] = (sla2_fwd_tma_kernel,
                  dict(q_desc=tile(bm), k_desc=tile(bk), v_desc=tile(bk), o_desc=tile(bm), os_desc=tile(bm),
                       **epilogue, IDX=i32, ALPHA=f32, LSE=f32, ZI=f32, sm_scale=D ** -0.5),
                  dict(BQ=bq, BK=bk, D=D, LINEAR=True, EPI_CHUNKS=ep, INTERPRET=False, BM=bm, LINEAR_PASS=False,
                       STORE_OS=False),
                  options(fwd.num_warps, fwd.num_stages, fwd.maxnreg))
    low = tuning.default_fwd_config(bq, bk, D, quant=True)
    bm = low.rows or bq
    epilogue = dict(qc_desc=tile(bm, cols=D // ep), h_desc=Desc("bf16", (1, D // ep, D)))
    out["fwd_lowbit"] = (sla2_fwd_lowbit_tma_kernel,
                         dict(q_desc=tile(bm), o_desc=tile(bm), os_desc=tile(bm), **epilogue,
                              q8_desc=Desc("i8", (1, bm, D)), k8_desc=Desc("i8", (1, bk, D)),
                              v8t_desc=Desc("fp8e4nv", (1, D, bk)), IDX=i32, ALPHA=f32, LSE=f32, ZI=f32, SQ=f32,
                              SK=f32, SV=f32, sm_scale=D ** -0.5),
                         dict(BQ=bq, BK=bk, D=D, LINEAR=True, EPI_CHUNKS=ep, INTERPRET=False, STORE_OS=False, BM=bm,
                              LINEAR_PASS=False),
                         options(low.num_warps, low.num_stages, low.maxnreg))
    out["query_pass"] = (query_pass_kernel,
                         dict(q_desc=tile(bq), o_desc=tile(bq), h_desc=Desc("bf16", (1, D, D)), ZI=f32,
                              q8_desc=Desc("i8", (1, bq, D)), SQ=f32, LSE=f32, KMEAN=f32, sm_scale=D ** -0.5),
                         dict(BQ=bq, D=D, LINEAR=False, QUANT=True, INTERPRET=False),
                         options(tuning.QUERY_PASS_WARPS))
    pre = tuning.PrecomputeConfig()
    out["precompute"] = (kv_precompute_kernel,
                         dict(K=bf16, V=bf16, HBLK=bf16, h_desc=bf16, ZBLK=f32, KSUM=f32, ZPART=f32, VMAX=f32),
                         dict(BK=bk, D=D, QUANT=False, INTERPRET=False, H_TMA=False),
                         options(pre.num_warps, pre.num_stages))
    bwd = tuning.default_bwd_config(bq, bk, D)
    bm = bwd.dq_rows or bq
    for overlap in (False, True) if fwd_gluon.AVAILABLE else ():  # FwdConfig.gluon_overlap off (the default), on
        warps, stages = fwd_gluon.launch_shape(bq, overlap)
        out["fwd_gluon_overlap" if overlap else "fwd_gluon"] = (
            fwd_gluon.sla2_fwd_gluon_kernel,
            dict(**{f"{t}_desc": Desc("bf16", (1, 1, bq, D), gluon=True) for t in ("q", "o")},
                 **{f"{t}_desc": Desc("bf16", (1, 1, bk, D), gluon=True) for t in ("k", "v", "h")},
                 IDX=i32, ALPHA=f32, LSE=f32, ZI=f32, sm_scale=D ** -0.5),
            dict(BQ=bq, BK=bk, D=D, LINEAR=True, OVERLAP=overlap, WARPS=warps, STAGES=stages),
            options(warps))
    g = dq_gluon.GLUON_DQ_ROWS
    for overlap in (False, True) if dq_gluon.AVAILABLE else ():  # BwdConfig.dq_gluon_overlap off (the default), on
        out["dq_gluon_overlap" if overlap else "dq_gluon"] = (
            dq_gluon.sla2_bwd_dq_gluon_kernel,
            dict(**{f"{t}_desc": Desc("bf16", (1, 1, g, D), gluon=True) for t in ("q", "o", "do", "dq")},
                 k_desc=Desc("bf16", (1, 1, bk, D), gluon=True), v_desc=Desc("bf16", (1, 1, bk, D), gluon=True),
                 LSE=f32, ROWS=f32, IDX=i32, ALPHA=f32, sm_scale=D ** -0.5),
            dict(BQ=bq, BK=bk, D=D, BM=g, LINEAR=True, DELTA_KNOWN=False, OVERLAP=overlap),
            options(dq_gluon.GLUON_DQ_WARPS))
    out["dq"] = (sla2_bwd_dq_tma_kernel,
                 dict(q_desc=tile(bm), k_desc=tile(bk), v_desc=tile(bk), o_desc=tile(bm), do_desc=tile(bm),
                      dq_desc=tile(bm), LSE=f32, ROWS=f32, IDX=i32, ALPHA=f32, sm_scale=D ** -0.5),
                 dict(BQ=bq, BK=bk, D=D, BM=bm, LINEAR=True, INTERPRET=False, DELTA_KNOWN=False),
                 options(bwd.dq_warps, bwd.dq_stages))
    qs = bwd.qs or bq
    out["dkdv"] = (sla2_bwd_dkdv_tma_kernel,
                   dict(q_desc=tile(qs), k_desc=tile(bk), v_desc=tile(bk), do_desc=tile(qs), dk_desc=tile(bk),
                        dv_desc=tile(bk), rows_desc=Desc("fp32", (1, 1, qs)), KV_PTR=i32, KV_QBLK=i32, KV_ORDER=i32,
                        DHK=bf16, DZ=f32, DZTOT=f32, sm_scale=D ** -0.5),
                   dict(BQ=bq, BK=bk, D=D, QS=qs, LINEAR=True, INTERPRET=False, REGISTER_KV=bwd.dkdv_register_kv),
                   options(bwd.dkdv_warps, bwd.dkdv_stages))
    out["linear"] = (sla2_bwd_linear_kernel,
                     dict(Q=bf16, DO=bf16, DQ=bf16, OS=bf16, ROWS=f32, ALPHA=f32, HI=f32, ZI=f32, DH=bf16, DZ=f32,
                          DALPHA=f32, PSI=bf16),
                     dict(BQ=bq, D=D, RS=min(bwd.linear_rows, bq), DC=min(bwd.linear_cols, D), DALPHA_FROM_OS=False,
                          INTERPRET=False),
                     options(bwd.linear_warps, bwd.linear_stages))
    # every argument not given above is one of the shape's scalars
    for kernel, args, consts, _ in out.values():
        for name in kernel.arg_names:
            if name not in args and name not in consts:
                args[name] = ints[name]
    return out


def signature(kernel, args: dict, consts: dict):
    """(signature, constexprs, attributes) for triton.compiler.ASTSource, specialised as a launch would be: ints
    equal to 1 become constants, pointers and ints that are multiples of 16 carry tt.divisibility = 16."""
    names = kernel.arg_names
    extra = set(args) ^ (set(names) - set(consts))
    if extra:
        raise ValueError(f"compile_stats: arguments of {kernel.__name__} out of step with the kernel: {sorted(extra)}")
    sig, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        value = consts.get(name, args.get(name))
        if name in consts or (type(value) is int and value == 1):
            sig[name], constexprs[(i,)] = "constexpr", value
        elif isinstance(value, Desc):
            sig[name] = value.type_name()
        elif isinstance(value, Ptr):
            sig[name], attrs[(i,)] = f"*{value.dtype}", [["tt.divisibility", 16]]
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            sig[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, constexprs, attrs


def loops(sass: str) -> list[dict]:
    """Each loop of the SASS (a backward branch spanning more than a poll): its address range, instruction count
    and the counts of the COUNTED opcodes in it. Branches after the last EXIT are the out-of-line retries of
    barrier waits, which jump back to their wait: not loops."""
    lines = [(int(m[1], 16), m[2]) for m in re.finditer(r"^\s+/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass, re.M)]
    last_exit = max((a for a, t in lines if opcode(t) == "EXIT"), default=0)
    out = []
    for addr, text in lines:
        m = re.search(r"\bBRA\s+0x([0-9a-f]+)", text)
        if not m or addr > last_exit or addr - int(m[1], 16) <= MIN_LOOP_BYTES:
            continue
        start = int(m[1], 16)
        body = [t for a, t in lines if start <= a <= addr]
        ops = [opcode(t) for t in body]
        counts = collections.Counter(op for op in ops if op in COUNTED)
        # where in the loop each counted kind first comes: e.g. whether a step's TMA loads issue before its softmax
        first = {op: ops.index(op) for op in sorted(counts)}
        out.append(dict(start=hex(start), end=hex(addr), instructions=len(body), **dict(sorted(counts.items())),
                        first=first, mufu_beside_wgmma=mufu_beside_wgmma(body)))
    return out


def mufu_beside_wgmma(body: list[str]) -> int:
    """How many of a loop's special-function instructions (exp2) issue while a tensor-core product is still in
    flight: after a wait that leaves some asynchronous products outstanding (`WARPGROUP.DEPBAR.LE gsb0, 0x1`) and
    before the next wait for all of them. ptxas places a wait where it likes among instructions that do not touch
    the product's registers, so this, not the source's order, says whether a softmax overlaps a product."""
    beside, count = False, 0
    for text in body:
        if opcode(text) == "WARPGROUP" and "DEPBAR" in text:
            beside = not re.search(r",\s*0x0\s*$", text)
        elif beside and opcode(text) == "MUFU":
            count += 1
    return count


def opcode(text: str) -> str:
    words = [w for w in text.split() if not w.startswith("@")]
    return words[0].split(".")[0] if words else ""


def programs_per_sm(regs: int, warps: int, shared: int) -> int:
    """Hopper: registers are given out 256 to a warp at a time, shared memory with 1 KB reserved a program."""
    per_warp = -(-regs * 32 // 256) * 256
    return min(SM_REGISTERS // (per_warp * warps), SM_WARPS // warps, SM_SHARED // (shared + SHARED_RESERVED))


def compile_one(kernel, args, consts, options, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource
    if getattr(kernel, "is_gluon", lambda: False)():  # a Gluon kernel: its own front end
        from triton.experimental.gluon._runtime import GluonASTSource as source
    sig, constexprs, attrs = signature(kernel, args, consts)
    compiled = triton.compile(source(kernel, sig, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32), options=options)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    regs, stack, shared = int(m[1]), int(m[2]), compiled.metadata.shared
    return dict(registers=regs, stack_bytes=stack, shared_bytes=shared, **options,
                programs_per_sm=programs_per_sm(regs, options["num_warps"], shared), loops=loops(sass))


def main(argv=None):
    all_kernels = ("fwd", "fwd_gluon", "fwd_gluon_overlap", "fwd_lowbit", "query_pass", "precompute", "dq", "dq_gluon",
                   "dq_gluon_overlap", "dkdv", "linear")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernels", default=",".join(all_kernels), help=f"comma-separated, of {', '.join(all_kernels)}")
    p.add_argument("--arch", type=int, default=90, help="compute capability ×10 (90: H100/H200, sm_90a)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(RESULTS))
    args = p.parse_args(argv)
    names = [k for k in args.kernels.split(",") if k]
    unknown = [k for k in names if k not in all_kernels]
    if unknown:
        raise SystemExit(f"compile_stats: unknown --kernels {','.join(unknown)} (choose from {', '.join(all_kernels)})")
    os.environ["TRITON_INTERPRET"] = "0"  # a real compile even where the tests' interpreter setting is on
    import triton

    table = specs()
    results = dict(triton=triton.__version__, arch=args.arch, kernels={})
    for name in names:
        if name not in table:  # a Gluon kernel with a Triton that has no Gluon
            print(f"{name:11s} not built: this Triton ({triton.__version__}) has no Gluon", flush=True)
            continue
        r = compile_one(*table[name], arch=args.arch)
        results["kernels"][name] = r
        print(f"{name:11s} {r['registers']:3d} registers, {r['stack_bytes']:4d} B stack, "
              f"{r['shared_bytes'] // 1024:3d} KB shared, {r['programs_per_sm']} programs an SM "
              f"({r['num_warps']} warps, {r['num_stages']} stages)", flush=True)
        for lp in r["loops"]:
            ops = ", ".join(f"{k} {v}" for k, v in lp.items() if k in COUNTED)
            beside = f"; MUFU beside a product {lp['mufu_beside_wgmma']}" if lp["mufu_beside_wgmma"] else ""
            print(f"    loop {lp['start']}–{lp['end']}: {lp['instructions']} instructions; {ops}{beside}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compile_stats.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
