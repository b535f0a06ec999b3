"""eval.py in-process on the tiny model: JSON report, and the all-blocks limit reproduces dense sampling."""

import importlib.util
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def eval_main():
    spec = importlib.util.spec_from_file_location("sla2_entry_eval", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_eval(eval_main, tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=["logger=csv", f"output_root={tmp_path}", "num_samples=2",
                                         "num_inference_steps=3", *overrides])
    eval_main(cfg)
    return json.loads(Path(cfg.out_json).read_text()), cfg


def test_eval_reports_quality_and_per_layer_error(eval_main, tmp_path):
    report, cfg = run_eval(eval_main, tmp_path, "attention.sparsity=0.9")
    assert len(report["per_sample"]) == 2 and [s["seed"] for s in report["per_sample"]] == [0, 1]
    assert len(report["rel_l1_per_layer"]) == cfg.model.transformer.arch.num_layers
    # 1 of 12 key blocks exact, the rest linear: clearly not full attention, but not garbage either.
    assert all(0.05 < e < 2.0 for e in report["rel_l1_per_layer"])
    assert isinstance(report["psnr"], float) and 0.0 < report["ssim"] < 1.0
    assert report["attention"]["sparsity"] == 0.9
    assert any(Path(cfg.output_dir).glob("csv/**/metrics.csv"))  # numbers went to the logger too


def test_selecting_every_block_reproduces_dense_sampling(eval_main, tmp_path):
    report, _ = run_eval(eval_main, tmp_path, "attention.sparsity=0.01")
    assert max(report["rel_l1_per_layer"]) < 1e-5
    assert report["ssim"] > 0.9999
    assert report["psnr"] == "inf" or report["psnr"] > 80


def test_qat_checkpoint_is_evaluated_with_the_low_bit_branch(eval_main, tmp_path):
    """A stage-2 checkpoint was trained through the low-bit forward: eval runs it the same way unless told."""
    spec = importlib.util.spec_from_file_location("sla2_entry_train", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "model=tiny", "logger=none", "stage=qat", "stage.allow_untrained_router=true", "trainer.max_steps=1",
            f"output_root={tmp_path / 'train'}",
            f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0", "trainer.limit_val_batches=0",
            "callbacks.progress.refresh_rate=0"])
    train.main(cfg)
    ckpt = f"ckpt={Path(cfg.ckpt_dir) / 'last.ckpt'}"
    on, _ = run_eval(eval_main, tmp_path / "on", ckpt)
    off, _ = run_eval(eval_main, tmp_path / "off", ckpt, "quant=false")
    assert on["attention"]["quant"] is True and on["attention"]["topk"] == "hard"
    assert off["attention"]["quant"] is False
    assert on["rel_l1_per_layer"] != off["rel_l1_per_layer"]
