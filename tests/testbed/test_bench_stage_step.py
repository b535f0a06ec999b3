"""scripts/testbed/bench_stage_step.py on a CPU: each variant builds its own stage and takes real steps."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_stage_step", ROOT / "scripts/testbed/bench_stage_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_variant_runs_its_own_stage(tmp_path):
    joint = "stage=qat_router stage.objective.router.distillation.query_blocks=2"
    report = load_script().main(["--device", "cpu", "--batch", "1", "--steps", "1", "--out", str(tmp_path),
                                 "--profile", "--variant", "stage=qat", "--variant", joint])
    qat, router = report["rows"]
    assert (qat["variant"], router["variant"]) == ("stage=qat", joint)
    assert all(r["s_per_step"] > 0 and r["loss"] > 0 for r in report["rows"])  # finite, or the script raises
    # the router's term is stage 1's loss on one layer: operations stage=qat's step does not have
    assert router["profile"]["launches"] > qat["profile"]["launches"] > 0
    assert json.loads((tmp_path / "bench_stage_step.json").read_text())["rows"] == report["rows"]


def test_a_bad_setting_is_one_line(tmp_path, capsys):
    script = load_script()
    for variant, message in (("stage=nope", "Could not find 'stage/nope'"),
                             ("stage=qat_router stage.objective.router.weight=0",
                              "stage.objective.router.weight must be > 0, got 0")):
        with pytest.raises(SystemExit) as stop:
            script.main(["--device", "cpu", "--batch", "1", "--steps", "1", "--out", str(tmp_path),
                         "--variant", variant])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and err.startswith("error: ") and message in err and "\n" not in err
