"""eval.py with every backbone configured: the metrics load from the config's paths and land in the table."""

import importlib.util
import json
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]


def test_configured_backbones_are_loaded_and_scored(backbones, tmp_path):
    spec = importlib.util.spec_from_file_location("sla2_entry_eval_backbones", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = [f"backbones.{k}={v}" for k, v in backbones.items() if k != "raft"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=["logger=none", "num_inference_steps=1", "max_prompts=1",
                                         f"output_root={tmp_path}", *paths])
    report = json.loads((Path(module.main(cfg)["folder"]) / "eval.json").read_text())
    dense, sla2 = report["rows"]
    scored = {"subject_consistency", "background_consistency", "aesthetic_quality", "imaging_quality",
              "clip_text_score", "motion_smoothness", "temporal_flickering"}
    assert set(dense["metrics"]) == scored
    assert set(sla2["metrics"]) == scored | {"psnr", "ssim", "lpips", "rel_l1_mean", "velocity_rel_l1",
                                             "guidance_rel_l1"}
    assert list(report["skipped"]) == ["dynamic_degree"]  # no RAFT weights configured
    assert 0 <= dense["metrics"]["imaging_quality"] <= 1 and sla2["metrics"]["lpips"] >= 0
