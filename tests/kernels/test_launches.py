"""Kernel launches and host synchronisations of one eager forward, counted on the CPU.

On the GPU an eager SLA2Attention call pays host time per launch (Triton's launcher, torch's dispatcher) and
stalls at every host synchronisation; kernels/benchmarks/bench_eager.py measures both there. Here the same
forward runs under Triton's interpreter and each launch is counted where it is made: every Triton kernel goes
through launch.run (patched), every torch operator that would launch a CUDA kernel is seen by a dispatch mode
(views and allocations launch nothing), and any operator that reads a device value on the host (.item(),
bool(tensor), .tolist(), nonzero) is recorded as a synchronisation. The index checks that synchronise on purpose
(checks.check_index_values, under the interpreter or SLA2_KERNELS_CHECK=1) are switched off, as on the GPU.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

import sla2_kernels
from sla2_kernels import checks, launch

aten = torch.ops.aten
# Operators that launch nothing on a GPU: views, metadata, allocations (the kernels write their outputs).
NO_LAUNCH = {
    aten.view, aten._unsafe_view, aten.expand, aten.permute, aten.transpose, aten.t, aten.as_strided, aten.detach,
    aten.alias, aten.unsqueeze, aten.squeeze, aten.select, aten.slice, aten.split, aten.unbind, aten.empty,
    aten.empty_strided, aten.empty_like, aten.new_empty, aten.new_empty_strided, aten.lift_fresh,
    aten.promote_types,
}
SYNCS = {aten._local_scalar_dense, aten.nonzero, aten.equal, aten.is_nonzero, aten.allclose}


class LaunchCounter(TorchDispatchMode):
    """Counts torch operators that launch a kernel and those that synchronise with the host. The custom ops of
    sla2_train (torch.ops.sla2.*) are opened: their kernel implementation runs with this mode active."""

    def __init__(self, impls: dict):
        super().__init__()
        self.torch_ops, self.syncs, self.impls = Counter(), Counter(), impls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "sla2":
            with self:
                return self.impls[func._opname](*args, **kwargs)
        if func.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd):
            with self:  # seen undecomposed inside an opened op: count what it decomposes into (to, reshape, ...)
                return func.decompose(*args, **kwargs)
        packet = func.overloadpacket
        if packet in SYNCS:
            self.syncs[str(packet)] += 1
        elif packet not in NO_LAUNCH:
            self.torch_ops[str(packet).split(".")[-1]] += 1
        return func(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch):
    """(Triton launches by name, LaunchCounter) for the code run inside `with counter:`."""
    from sla2_train.attention import ops

    triton_launches = Counter()
    real_run = launch.run

    def run(name, *args, **kwargs):
        triton_launches[name] += 1
        with _disable_current_modes():  # the interpreter's own tensor work is not a launch
            return real_run(name, *args, **kwargs)

    monkeypatch.setattr(launch, "run", run)
    # the index checks that synchronise on purpose return at once on a GPU without SLA2_KERNELS_CHECK=1
    monkeypatch.setattr(checks, "check_index_values", lambda indices, nk: None)
    impls = {"router": ops.router_kernels, "attention": ops.attention_kernels}
    return triton_launches, LaunchCounter(impls)


def _inputs(kt, N=450, H=2, D=64):
    (q, k, v), _ = kt.make_qkv(1, H, N, D, torch.bfloat16, "bnhd")
    return q, k, v


# Triton kernels of one forward as the training op runs it: the router, then sla2_forward.
ROUTER = {"pool_sums": 1, "pooled_project": 1, "block_scores": 1, "topk": 1}
FORWARD = {"kv_precompute": 1, "kv_totals": 1, "complement": 1}
# bf16: the TMA kernel (the linear branch in its epilogue; its Gluon twin on a GPU). Low bit: K̂ and V̂ quantised in one pass, the pass over
# Q (Q̂), then the TMA kernel.
BF16 = {"sla2_fwd_tma": 1}
LOWBIT = {"quantize_kv": 1, "query_pass": 1, "sla2_fwd_lowbit_tma": 1}


@pytest.mark.parametrize("quant", [False, True], ids=["bf16", "lowbit"])
def test_kernel_forward_launches_and_syncs(quant, counted, kt):
    """router + sla2_forward: 4 + (5 or 7) launches (the H_I product is torch's bmm), no synchronisation."""
    triton_launches, counter = counted
    q, k, v = _inputs(kt)
    eye, alpha = torch.eye(64).repeat(2, 1, 1), torch.full((1, 2, 1), 0.7)
    with counter:
        _, idx = sla2_kernels.router(q, k, eye, eye, block_q=64, block_k=64, topk=2, layout="bnhd")
        sla2_kernels.sla2_forward(q, k, v, idx, alpha, block_q=64, block_k=64, quant=quant, layout="bnhd")
    assert dict(triton_launches) == {**ROUTER, **FORWARD, **(LOWBIT if quant else BF16)}
    assert dict(counter.torch_ops) == {"bmm": 1}, counter.torch_ops
    assert not counter.syncs, f"host synchronisations: {dict(counter.syncs)}"


@pytest.mark.parametrize("path", ["ops", "direct"])
@pytest.mark.parametrize("quant", [False, True], ids=["bf16", "lowbit"])
def test_module_forward_launches_and_syncs(quant, path, counted, kernel_ops, kt, monkeypatch):
    """SLA2Attention's eager forward, through the custom ops (as torch.compile and selective checkpointing take it)
    and on the eager CUDA path without them (the training path: direct.py): the kernels above plus α's sigmoid,
    and no synchronisation anywhere between the module's input and its output."""
    from sla2_train.attention import SLA2Attention, backend, direct

    if path == "direct":  # the counter is a dispatch mode, under which backend.op_path would keep the ops
        monkeypatch.setattr(backend, "op_path", lambda q: (direct.router, direct.attention))
    triton_launches, counter = counted
    attn = SLA2Attention(num_heads=2, head_dim=64, sparsity=0.75, block_q=64, block_k=64, quant=quant)
    q, k, v = _inputs(kt)
    with counter:
        o = attn(q, k, v)
    assert o.shape == q.shape and bool(torch.isfinite(o).all())
    assert dict(triton_launches) == {**ROUTER, **FORWARD, **(LOWBIT if quant else BF16)}
    assert dict(counter.torch_ops) == {"bmm": 1, "sigmoid": 1}, counter.torch_ops
    assert not counter.syncs, f"host synchronisations: {dict(counter.syncs)}"


def test_the_counter_sees_launches_and_syncs(counted):
    """The counter is not blind: a torch launch, a view and a host read are told apart."""
    _, counter = counted
    x = torch.randn(4, 4)
    with counter:
        y = (x * 2).view(16)
        bool(y.sum() > 0)
    assert counter.torch_ops == Counter({"mul": 1, "sum": 1, "gt": 1})
    assert counter.syncs == Counter({"aten._local_scalar_dense": 1})


def test_host_benchmark_counts_the_same_launches(tmp_path):
    """kernels/benchmarks/bench_host.py --skip-launches, the host-time benchmark's CPU mode, runs the module's host
    code with each launch counted instead of made: it must see the launches counted above, one each a call (in a
    subprocess, since its replacements are process-wide; its times are for the GPU and not checked here)."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), str(root / "kernels")]))
    env.pop("TRITON_INTERPRET", None)  # nothing is interpreted: the launches are skipped
    out = subprocess.run([sys.executable, str(root / "kernels" / "benchmarks" / "bench_host.py"), "--skip-launches",
                          "--calls", "2", "--repeats", "1", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "bench_host.json").read_text())["rows"]
    # the host code as on a GPU: the bf16 forward's Gluon kernel where this Triton has Gluon
    from sla2_kernels.gluon_tiles import AVAILABLE

    bf16 = {"sla2_fwd_gluon": 1} if AVAILABLE else BF16
    assert rows["bf16"]["launches_per_call"] == {**ROUTER, **FORWARD, **bf16}
    assert rows["lowbit"]["launches_per_call"] == {**ROUTER, **FORWARD, **LOWBIT}
    assert all(rows[p][k] > 0 for p in rows for k in ("module", "module_no_grad", "module_via_ops",
                                                      "module_via_ops_no_grad", "op_router", "kernels_router",
                                                      "op_attention", "kernels_forward"))
