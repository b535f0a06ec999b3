"""compile_stats.py (the kernels compiled for Hopper on any machine): its argument specs stay in step with the
kernels, its SASS loop finder and occupancy rule are right on known inputs, and one real compile reports sane
resources."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "kernels" / "benchmarks"))
import compile_stats as cs  # noqa: E402  (a benchmark script beside bench.py)


def test_every_kernel_argument_has_a_value():
    table = cs.specs()
    assert set(table) == {"fwd", "fwd_gluon", "fwd_gluon_overlap", "fwd_lowbit", "query_pass", "precompute", "dq",
                          "dq_gluon", "dq_gluon_overlap", "dkdv", "linear"}
    for kernel, args, consts, _ in table.values():
        sig, _, _ = cs.signature(kernel, args, consts)  # raises, naming them, on arguments out of step
        assert list(sig) == list(kernel.arg_names)


def test_a_spec_out_of_step_with_its_kernel_is_named():
    kernel, args, consts, _ = cs.specs()["dq"]
    with pytest.raises(ValueError, match="sm_scale"):
        cs.signature(kernel, {k: v for k, v in args.items() if k != "sm_scale"}, consts)
    with pytest.raises(ValueError, match="EXTRA"):
        cs.signature(kernel, {**args, "EXTRA": 3}, consts)


def test_specialisation_follows_the_launch():
    kernel, args, consts, _ = cs.specs()["linear"]
    sig, constexprs, attrs = cs.signature(kernel, args, consts)
    names = kernel.arg_names
    assert sig["saq"] == "constexpr" and constexprs[(names.index("saq"),)] == 1  # a contiguous α: stride 1
    assert sig["sqn"] == "i32" and attrs[(names.index("sqn"),)] == [["tt.divisibility", 16]]  # D = 128
    assert sig["N"] == "i32" and (names.index("N"),) not in attrs  # 32760 is not a multiple of 16
    assert sig["Q"] == "*bf16" and sig["HI"] == "*fp32"


SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4], R2 ;
        /*0020*/              @!P0 BRA 0x0010 ;
        /*0030*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ ;
        /*0040*/                   LDL R3, [R1] ;
        /*0050*/                   MUFU.EX2 R4, R4 ;
        /*0060*/                   FADD R4, R4, R3 ;
        /*0070*/                   STL [R1], R4 ;
        /*0080*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0090*/               @P1 BRA 0x0030 ;
        /*00a0*/                   EXIT ;
        /*00b0*/                   BRA 0x0000 ;
        /*00c0*/                   BRA 0x00c0;
"""


def test_loops_are_backward_branches_before_the_last_exit():
    # the 16-byte poll at 0x20 is a wait, the jump back from 0xb0 an out-of-line retry: one loop, 0x30–0x90
    (loop,) = cs.loops(SASS)
    assert (loop["start"], loop["end"], loop["instructions"]) == ("0x30", "0x90", 7)
    assert (loop["HGMMA"], loop["LDL"], loop["STL"], loop["MUFU"]) == (2, 1, 1, 1)
    assert loop["first"] == {"HGMMA": 0, "LDL": 1, "MUFU": 2, "STL": 4}
    assert loop["mufu_beside_wgmma"] == 0  # no wait leaves a product in flight


def test_exponentials_beside_a_product_are_those_between_a_partial_and_a_full_wait():
    body = ["HGMMA.64x64x16.F32.BF16 R88, gdesc[UR8], RZ, !UPT, gsb0", "MUFU.EX2 R4, R4",
            "WARPGROUP.DEPBAR.LE gsb0, 0x1", "MUFU.EX2 R5, R5", "FADD R5, R5, R4", "MUFU.EX2 R6, R6",
            "WARPGROUP.DEPBAR.LE gsb0, 0x0", "MUFU.EX2 R7, R7", "WARPGROUP.DEPBAR.LE gsb0, 0x2", "@P0 MUFU.EX2 R8, R8"]
    assert cs.mufu_beside_wgmma(body) == 3


@pytest.mark.parametrize("regs, warps, shared, programs", [
    (255, 4, 96 * 1024, 2),  # 64 K registers / (256 · 4 warps · 32 lanes): 2
    (128, 4, 40 * 1024, 4),  # registers allow 4, shared memory 5
    (80, 8, 32 * 1024, 3),  # 80 · 256 threads: 3
    (32, 4, 112 * 1024, 2),  # shared memory: 2 · (112 + 1) KB fits 228 KB
    (32, 4, 114 * 1024, 1),  # 2 · (114 + 1) KB does not
    (32, 2, 0, 32),  # the SM's 64 warps
])
def test_programs_per_sm(regs, warps, shared, programs):
    assert cs.programs_per_sm(regs, warps, shared) == programs


def test_a_real_compile_reports_resources(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "kernels"), os.environ.get("PYTHONPATH", "")])}
    from sla2_kernels.sla2_bwd_dq_gluon import AVAILABLE as gluon

    names = ["dq", "dq_gluon", "dq_gluon_overlap"] if gluon else ["dq"]
    run = subprocess.run([sys.executable, str(ROOT / "kernels" / "benchmarks" / "compile_stats.py"), "--kernels",
                          ",".join(names), "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    kernels = json.loads((tmp_path / "compile_stats.json").read_text())["kernels"]
    for name in names:
        dq = kernels[name]
        assert 0 < dq["registers"] <= 255 and dq["shared_bytes"] > 0 and dq["programs_per_sm"] >= 1, name
        main_loop = max(dq["loops"], key=lambda lp: lp["instructions"])
        # the dq step: S = Q Kᵀ, dP = dO Vᵀ, dS K and P K on the tensor cores; one exp2 a score; K, V by TMA
        assert main_loop["HGMMA"] > 0 and main_loop["MUFU"] > 0 and main_loop["UTMALDG"] == 2, name
        assert name in run.stdout
    if gluon:  # what the Gluon kernel is for: the next key block's loads issue before this step's exponentials,
        # with two programs an SM and nothing spilled; its overlapped loop takes every exp2 while dO Vᵀ runs
        loop = max(kernels["dq_gluon"]["loops"], key=lambda lp: lp["instructions"])
        assert loop["first"]["UTMALDG"] < loop["first"]["MUFU"] and loop["mufu_beside_wgmma"] == 0
        overlapped = max(kernels["dq_gluon_overlap"]["loops"], key=lambda lp: lp["instructions"])
        assert overlapped["mufu_beside_wgmma"] == overlapped["MUFU"] == loop["MUFU"]
        for name in ("dq_gluon", "dq_gluon_overlap"):
            assert kernels[name]["stack_bytes"] == 0 and kernels[name]["programs_per_sm"] == 2, name


@pytest.mark.parametrize("name, linear, programs", [("fwd_gluon", False, 2), ("fwd_gluon_overlap", True, 1),
                                                   ("fwd_gluon_overlap", False, 1)])
def test_the_gluon_forward_compiles(tmp_path, name, linear, programs):
    """Both loops of the Gluon forward build for sm_90a, spill-free, with the installed Triton, the overlapped one
    at one program (two warp groups) an SM and with its exponentials beside the previous step's P V in the SASS;
    also with LINEAR=False (every key block selected), which Triton 3.6 failed to lower while the epilogue's linear
    branch was compiled out."""
    pytest.importorskip("triton.backends.nvidia")
    from sla2_kernels.sla2_fwd_gluon import AVAILABLE

    if not AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "kernels"),
                                          str(ROOT / "kernels" / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    script = (f"import json, compile_stats as cs; k, a, c, o = cs.specs()[{name!r}]; "
              f"print(json.dumps(cs.compile_one(k, a, {{**c, 'LINEAR': {linear}}}, o, arch=90)))")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert r["stack_bytes"] == 0 and r["programs_per_sm"] == programs
    loop = max(r["loops"], key=lambda lp: lp["instructions"])
    # the overlapped loop's point, as ptxas scheduled it: every exp2 of the softmax while the previous P V runs
    assert loop["MUFU"] > 0 and loop["mufu_beside_wgmma"] == (loop["MUFU"] if name == "fwd_gluon_overlap" else 0)
