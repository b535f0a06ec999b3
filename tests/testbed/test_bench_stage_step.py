"""scripts/testbed/bench_stage_step.py on a CPU: each variant builds its own stage and takes real steps."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_stage_step", ROOT / "scripts/testbed/bench_stage_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_variant_runs_its_own_stage(tmp_path):
    report = load_script().main(["--device", "cpu", "--batch", "1", "--steps", "1", "--out", str(tmp_path),
                                 "--variant", "stage=qat",
                                 "--variant", "stage=qat_router stage.objective.router.distillation.query_blocks=2"])
    assert [r["variant"] for r in report["rows"]] == ["stage=qat", "stage=qat_router "
                                                      "stage.objective.router.distillation.query_blocks=2"]
    assert all(r["s_per_step"] > 0 for r in report["rows"])
    assert all(r["loss"] > 0 for r in report["rows"])  # finite, or the script raises
    assert json.loads((tmp_path / "bench_stage_step.json").read_text())["rows"] == report["rows"]
