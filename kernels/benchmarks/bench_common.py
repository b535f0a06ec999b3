"""What bench.py, bench_train.py and profile_ncu.py share: shapes, the kernels import, FlexAttention's
equal-density block mask, and the run bookkeeping (time budget, error capture, resources, JSON).

The benches run as scripts (`python3 kernels/benchmarks/bench.py`), so this module is imported by its plain name.
Raw output goes to --out: $OUT when set, else kernels/benchmarks/results/ (ignored by git).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import time
import traceback

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SHAPES = {"1.3b": (1, 12, 32760, 128), "14b": (1, 40, 75600, 128)}  # Wan2.1 1.3B 480p, 14B 720p
BLOCK_Q, BLOCK_K = 128, 64  # the paper's blocks


def topk_count(nk: int, sparsity: float) -> int:
    """Blocks kept per query block, as SLA2Attention counts them."""
    from sla2_train.attention.reference import topk_count as count

    return count(nk, sparsity)


def flip_pair(cfg, field: str, kernel: str):
    """(cfg, cfg with the boolean option `field` flipped), the pair a flip times: an option of a kernel (field other
    than `kernel`, e.g. a loop of the Gluon kernel) is flipped on that kernel; the config's own flipped() keeps the
    other options valid."""
    own = cfg if field == kernel or getattr(cfg, kernel) else cfg.flipped(kernel)
    return own, own.flipped(field)


def arg_parser(description: str, budget_s: float) -> argparse.ArgumentParser:
    """The options both benches take: output folder, shapes, sparsities, sweep, wall-clock budget."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=os.environ.get("OUT") or str(RESULTS),
                   help="folder for the JSON (default: $OUT, else kernels/benchmarks/results/)")
    p.add_argument("--shapes", default="1.3b,14b")
    p.add_argument("--sparsities", default="0.9,0.95,0.97")
    p.add_argument("--sweep", action="store_true", help="tune configurations first (first shape) and time the rows "
                   "with the fastest")
    p.add_argument("--budget-s", type=float, default=budget_s)
    return p


def parse_lists(args, *float_lists: str):
    """Comma-separated --shapes and the named float lists, parsed in place."""
    args.shapes = [s for s in args.shapes.split(",") if s]
    for name in ("sparsities", *float_lists):
        setattr(args, name, [float(x) for x in getattr(args, name).split(",") if x])
    return args


def import_kernels():
    """`sla2_kernels`, with the custom ops of sla2_train registered (torch.ops.sla2.*, the one autograd path):
    installed (`pip install -e .`) or on PYTHONPATH (`PYTHONPATH=src:kernels` in a bare checkout)."""
    try:
        import sla2_kernels
        import sla2_kernels.backward  # noqa: F401  (triton: fail here, not in the middle of a run)
        import sla2_train.attention.ops  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"cannot import the kernels ({err}): run `pip install -e .` or set PYTHONPATH=src:kernels")
    return sla2_kernels


class BenchBase:
    """Bookkeeping of one benchmark run: `results` (saved as JSON), a wall-clock budget, kept-going errors."""

    json_name = "bench.json"

    def __init__(self, args, **fields):
        import torch
        import triton

        self.torch, self.triton, self.args = torch, triton, args
        self.sk = import_kernels()
        self.t0 = time.time()
        self.results = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "cuda": torch.version.cuda,
            "rows": [],
            "resources": {},
            "errors": [],
            **fields,
        }

    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.t0)

    # Comparisons time their two variants in turns, this many rounds each: between calls the same dk/dv launch at
    # the Wan-14B shape took 16.7 to 19.3 ms (H100, 2026-12-07), more than the differences compared.
    PAIR_ROUNDS = 5

    def time_pair(self, first, second) -> tuple[float, float]:
        """Medians of PAIR_ROUNDS timings (the subclass's time_ms) of each of two variants, taken alternately."""
        a, b = [], []
        for _ in range(self.PAIR_ROUNDS):
            a.append(self.time_ms(first))
            b.append(self.time_ms(second))
        return float(statistics.median(a)), float(statistics.median(b))

    def safe(self, what, fn, default=None):
        try:
            return fn()
        except Exception as err:  # keep going: one failure must not cost the whole run
            msg = f"{what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print("ERROR", msg, flush=True)
            traceback.print_exc(limit=4)
            self.results["errors"].append(msg)
            return default

    def run_shapes(self, margin_s: float):
        """self.run_shape(name) for each of --shapes while the budget leaves margin_s seconds; saved after each."""
        for shape in self.args.shapes:
            if self.left() < margin_s:
                self.results["errors"].append(f"budget: skipped shape {shape}")
                continue
            self.safe(f"shape {shape}", lambda: self.run_shape(shape))
            self.save()

    def record_resources(self, tag, compiled: dict):
        """Registers, spills, shared memory and MMA kinds of the kernels last compiled (name -> CompiledKernel)."""
        for name, k in compiled.items():
            if k is None:
                continue
            try:
                ptx = k.asm.get("ptx", "")
                self.results["resources"][f"{tag}:{name}"] = dict(
                    regs=int(k.n_regs), spills=int(k.n_spills), shared=int(k.metadata.shared),
                    stages=getattr(k.metadata, "num_stages", None), warps=getattr(k.metadata, "num_warps", None),
                    wgmma=ptx.count("wgmma.mma_async"), mma_sync=ptx.count("mma.sync"),
                )
            except Exception as err:
                self.results["resources"][f"{tag}:{name}"] = str(err)

    def save(self):
        out = pathlib.Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / self.json_name).write_text(json.dumps(self.results, indent=1, default=str))

    def make_flex(self):
        """flex_attention compiled once with fixed shapes, so the timings hold no recompilation."""
        from torch.nn.attention.flex_attention import flex_attention

        return self.torch.compile(flex_attention, dynamic=False)

    def flex_mask(self, idx, nk, N):
        """A BlockMask of exactly the SLA2 selection idx [B, H, nq, topk] (equal density), all blocks 'full'."""
        torch = self.torch
        from torch.nn.attention.flex_attention import BlockMask

        B, H, nq, topk = idx.shape
        full_idx = torch.zeros(B, H, nq, nk, device="cuda", dtype=torch.int32)
        full_idx[..., :topk] = idx
        full_num = torch.full((B, H, nq), topk, device="cuda", dtype=torch.int32)
        none_num = torch.zeros(B, H, nq, device="cuda", dtype=torch.int32)
        none_idx = torch.zeros(B, H, nq, nk, device="cuda", dtype=torch.int32)
        return BlockMask.from_kv_blocks(
            none_num, none_idx, full_num, full_idx, BLOCK_SIZE=(BLOCK_Q, BLOCK_K), seq_lengths=(N, N)
        )
