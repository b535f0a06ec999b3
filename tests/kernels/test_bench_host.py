"""kernels/benchmarks/bench_host.py --skip-launches, the host-time benchmark's CPU mode: it runs the module's host
code with the launches counted instead of made, and writes its table. Its replacements are process-wide, so it
runs in a subprocess. Times are not checked (benchmarks are for the GPU); what each call launches is."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BF16 = {"pool_sums", "pooled_project", "block_scores", "topk", "kv_precompute", "kv_totals", "complement",
        "sla2_fwd_tma"}


def test_host_benchmark_counts_each_launch_of_a_call(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "kernels")]))
    env.pop("TRITON_INTERPRET", None)  # the launches are skipped, nothing is interpreted
    out = subprocess.run([sys.executable, str(ROOT / "kernels" / "benchmarks" / "bench_host.py"), "--skip-launches",
                          "--calls", "2", "--repeats", "1", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "bench_host.json").read_text())
    bf16, lowbit = res["rows"]["bf16"], res["rows"]["lowbit"]
    # one launch of each Triton kernel a call; the low-bit path quantises K, V and Q and runs its own main kernel
    assert bf16["launches_per_call"] == {name: 1 for name in BF16}
    assert lowbit["launches_per_call"] == {name: 1 for name in BF16 - {"sla2_fwd_tma"}
                                           | {"quantize_kv", "quantize_q", "sla2_fwd_lowbit_tma"}}
    for row in (bf16, lowbit):
        assert all(row[k] > 0 for k in ("module", "module_no_grad", "op_router", "kernels_router", "op_attention",
                                        "kernels_forward"))
    assert "module" in out.stdout and "launches skipped" in out.stdout
