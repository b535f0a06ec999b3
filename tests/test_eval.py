"""eval.py end to end on the tiny random Wan folder: videos, metrics, table, settings, and bad input as one line."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sla2_train.evaluation.video_io import read_mp4

ROOT = Path(__file__).resolve().parents[1]
FAST = ["logger=none", "num_inference_steps=2", "max_prompts=1"]
BACKBONE_METRICS = ["subject_consistency", "background_consistency", "aesthetic_quality", "imaging_quality",
                    "clip_text_score", "motion_smoothness", "dynamic_degree", "lpips"]


@pytest.fixture(scope="module")
def eval_main():
    spec = importlib.util.spec_from_file_location("sla2_entry_eval", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


MODELS = {}


@pytest.fixture(scope="module", autouse=True)
def models_dir(tmp_path_factory):
    # One random-model folder for the module: it depends on the recipe only.
    MODELS["dir"] = tmp_path_factory.mktemp("random-models")


def compose_eval(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("eval", overrides=[*FAST, f"output_root={tmp_path}", f"random_models_dir={MODELS['dir']}",
                                          *overrides])


def run_eval(eval_main, tmp_path, *overrides):
    report = eval_main(compose_eval(tmp_path, *overrides))
    folder = Path(report["folder"])
    return json.loads((folder / "eval.json").read_text()), folder


def test_prompts_to_videos_metrics_and_table(eval_main, tmp_path):
    report, folder = run_eval(eval_main, tmp_path, "attention.sparsity=0.9", "quant=[false,true]", "max_prompts=2")
    s = report["settings"]
    assert (s["num_frames"], s["height"], s["width"]) == (9, 112, 144)  # latents [4, 3, 14, 18] through the VAE
    for key in ("fps", "num_inference_steps", "scheduler", "guidance_scale", "negative_prompt", "seeds",
                "videos_per_prompt", "prompt_set", "checkpoint", "attention", "prompts_expanded"):
        assert key in s
    assert s["scheduler"]["flow_shift"] == 3.0 and s["guidance_scale"] == 5.0 and len(s["prompts"]) == 2
    names = [r["name"] for r in report["rows"]]
    assert names == ["dense", "sla2 0.9 bf16", "sla2 0.9 int8/fp8"]
    # Every video is a decodable mp4 of the settings' size, and dense/SLA2 share prompts and seeds.
    assert len(report["videos"]) == 6
    for v in report["videos"]:
        assert read_mp4(folder / v["video"]).shape == (9, 112, 144, 3)
        assert v["forwards"] == 2 * 2  # two steps, classifier-free guidance
    dense, bf16, lowbit = report["rows"]
    assert set(dense["metrics"]) == {"temporal_flickering"}
    assert {"temporal_flickering", "psnr", "ssim", "rel_l1_mean"} <= set(bf16["metrics"])
    assert 0 < bf16["metrics"]["ssim"] <= 1 and 0.05 < bf16["metrics"]["rel_l1_mean"] < 2
    assert len(bf16["rel_l1_per_layer"]) == 2 and bf16["rel_l1_per_layer"] != lowbit["rel_l1_per_layer"]
    assert bf16["attention_tflops_actual"] < dense["attention_tflops_actual"]
    assert dense["attention_tflops_actual"] == bf16["attention_tflops_dense_equivalent"]
    for row in report["rows"]:
        assert row["seconds_per_video"] > 0 and row["attention_ms_per_forward"] > 0
    assert sorted(report["skipped"]) == sorted(BACKBONE_METRICS)
    assert all(line.startswith(f"{k} skipped: set backbones.") for k, line in report["skipped"].items())
    table = (folder / "table.md").read_text()
    assert "| dense |" in table and "| sla2 0.9 int8/fp8 |" in table and "9×112×144" in table
    # the spread: standard errors per row, and each SLA2 row paired with dense video by video
    assert set(dense["metrics_sem"]) == {"temporal_flickering"} and "paired_vs_dense" not in dense
    flicker = bf16["paired_vs_dense"]["temporal_flickering"]
    assert flicker["n"] == 2 and flicker["diff"] == pytest.approx(
        bf16["metrics"]["temporal_flickering"] - dense["metrics"]["temporal_flickering"])
    assert "psnr" not in bf16["paired_vs_dense"] and "| Attention − dense |" in table
    # per sampling step: the probe's attention error (its mean is the row's) and the velocity replay
    for row in (bf16, lowbit):
        assert len(row["rel_l1_per_step"]) == 2
        assert sum(row["rel_l1_per_step"]) / 2 == pytest.approx(row["metrics"]["rel_l1_mean"], rel=1e-9)
        velocity = row["velocity_rel_l1_per_step"]
        assert set(velocity) == {"cond", "uncond", "guidance", "guided"} and all(len(v) == 2 for v in velocity.values())
        assert all(0 < e < 10 for v in velocity.values() for e in v)
        assert row["metrics"]["velocity_rel_l1"] == pytest.approx(sum(velocity["guided"]) / 2)
        assert "velocity_rel_l1" not in row["paired_vs_dense"]  # dense has no velocity against itself
    assert bf16["velocity_rel_l1_per_step"] != lowbit["velocity_rel_l1_per_step"]
    assert "| step | sla2 0.9 bf16: attention |" in table and "sla2 0.9 int8/fp8: guided |" in table


def test_selecting_every_block_reproduces_dense_videos(eval_main, tmp_path):
    report, _ = run_eval(eval_main, tmp_path, "attention.sparsity=0.01", "max_prompts=1")
    sla2 = report["rows"][1]
    assert max(sla2["rel_l1_per_layer"]) < 1e-5
    assert max(e for v in sla2["velocity_rel_l1_per_step"].values() for e in v) < 1e-5
    assert sla2["metrics"]["ssim"] > 0.9999
    assert sla2["metrics"]["psnr"] == "inf" or sla2["metrics"]["psnr"] > 60


def test_the_best_mass_oracle_is_a_row_of_its_own(eval_main, tmp_path):
    router, _ = run_eval(eval_main, tmp_path / "router", "attention.sparsity=0.9")
    oracle, folder = run_eval(eval_main, tmp_path / "oracle", "attention.sparsity=0.9", "attention.selection=bestmass")
    assert [r["name"] for r in oracle["rows"]] == ["dense", "sla2 0.9 bf16 bestmass"]
    assert oracle["settings"]["attention_built"]["selection"] == "bestmass"
    assert oracle["rows"][1]["rel_l1_per_layer"] != router["rows"][1]["rel_l1_per_layer"]
    assert "| sla2 0.9 bf16 bestmass |" in (folder / "table.md").read_text()


def test_dense_model_reports_one_row(eval_main, tmp_path):
    report, _ = run_eval(eval_main, tmp_path, "attention=full", "max_prompts=1")
    assert [r["name"] for r in report["rows"]] == ["dense"]


def test_results_are_never_overwritten(eval_main, tmp_path):
    fast = ("attention=full", "num_inference_steps=1")
    _, first = run_eval(eval_main, tmp_path, *fast)
    _, second = run_eval(eval_main, tmp_path, *fast)
    _, other = run_eval(eval_main, tmp_path, *fast, "guidance_scale=3.0")
    assert len({first, second, other}) == 3 and (first / "eval.json").exists()
    assert second.name == first.name + "-1" and other.name != first.name


def _only_folder(root: Path) -> Path:
    (folder,) = [p for p in (root / "eval").glob("*/*") if p.is_dir()]
    return folder


def test_a_stopped_run_continues_where_it_stopped(eval_main, tmp_path, monkeypatch):
    """Stopped in its second prompt, the same command samples the second and third prompts only, in the same
    folder, and reports what an uninterrupted run reports (timings aside); a line torn by the stop is dropped."""
    from sla2_train.evaluation import evaluate

    common = ("attention.sparsity=0.9", "quant=[false,true]", "max_prompts=3")
    whole, _ = run_eval(eval_main, tmp_path / "whole", *common)
    generate, calls = evaluate._generate, []

    def counted(*args, stop_at=None, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return generate(*args, **kwargs)

    # a unit is 3 videos (dense, bf16, low-bit): stop at the second unit's SLA2 video
    monkeypatch.setattr(evaluate, "_generate", lambda *a, **k: counted(*a, stop_at=5, **k))
    with pytest.raises(KeyboardInterrupt):
        eval_main(compose_eval(tmp_path / "cut", *common))
    folder = _only_folder(tmp_path / "cut")
    progress = folder / "progress.jsonl"
    assert not (folder / "eval.json").exists() and len(progress.read_text().splitlines()) == 1
    with progress.open("a") as f:
        f.write('{"prompt_index": 1, "seed": 0, "rec')

    calls.clear()
    monkeypatch.setattr(evaluate, "_generate", counted)
    resumed, resumed_folder = run_eval(eval_main, tmp_path / "cut", *common)
    assert resumed_folder == folder and len(calls) == 2 * 3
    assert len(progress.read_text().splitlines()) == 3

    def videos(report):
        return [(v["row"], v["prompt_index"], v["seed"], v["video"], v["metrics"]) for v in report["videos"]]

    assert videos(resumed) == videos(whole)
    for a, b in zip(resumed["rows"], whole["rows"]):
        assert a["name"] == b["name"] and a["metrics"] == pytest.approx(b["metrics"], rel=1e-9)
        for key in ("rel_l1_per_layer", "rel_l1_per_step"):
            assert a.get(key) == pytest.approx(b.get(key), rel=1e-9), key
        assert a["attention_ms_per_forward"] > 0

    # resume=false in a stopped folder samples every prompt again
    progress.write_text(progress.read_text().splitlines()[0] + "\n")
    (folder / "eval.json").unlink()
    calls.clear()
    again, again_folder = run_eval(eval_main, tmp_path / "cut", *common, "resume=false")
    assert again_folder == folder and len(calls) == 3 * 3 and videos(again) == videos(whole)


def test_qat_checkpoint_is_evaluated_with_the_low_bit_branch(eval_main, tmp_path):
    """A stage-2 checkpoint was trained through the low-bit forward: eval runs it the same way unless told."""
    ckpt = _qat_checkpoint(tmp_path)
    on, _ = run_eval(eval_main, tmp_path / "on", f"ckpt={ckpt}", "max_prompts=1")
    off, _ = run_eval(eval_main, tmp_path / "off", f"ckpt={ckpt}", "max_prompts=1", "quant=false")
    assert [r["name"] for r in on["rows"]] == ["dense", "sla2 0.95 int8/fp8"]
    assert [r["name"] for r in off["rows"]] == ["dense", "sla2 0.95 bf16"]
    assert on["settings"]["checkpoint"]["path"] == str(Path(ckpt).resolve())
    assert on["settings"]["attention_built"]["topk"] == "hard"


def test_dense_rows_can_run_the_folders_own_weights(eval_main, tmp_path):
    """dense_weights=base: the dense rows are the model the folder holds (as without a checkpoint), the SLA2
    rows the checkpoint's, whose transformer stage 2 changed.

    Videos are compared by their scores, which are computed on the frames before encoding: PyAV's libx264
    does not write the same bytes for the same frames every time (up to 4 distinct files in 16 encodes, decoded up
    to 17 levels apart), so decoded mp4s of two runs need not be equal even when the runs' frames are."""
    ckpt = _qat_checkpoint(tmp_path, "stage.optimizer.lr=0.05")
    plain, _ = run_eval(eval_main, tmp_path / "plain", "max_prompts=1")
    same, _ = run_eval(eval_main, tmp_path / "same", f"ckpt={ckpt}", "max_prompts=1")
    base, base_dir = run_eval(eval_main, tmp_path / "base", f"ckpt={ckpt}", "max_prompts=1", "dense_weights=base")

    def scores(report, row):
        return next(v["metrics"] for v in report["videos"] if v["row"] == row)

    flicker = "temporal_flickering"
    assert scores(base, "dense")[flicker] == scores(plain, "dense")[flicker]
    assert scores(same, "dense")[flicker] != scores(plain, "dense")[flicker]  # stage 2 changed the transformer
    sla2 = "sla2 0.95 int8/fp8"
    assert scores(base, sla2)[flicker] == scores(same, sla2)[flicker]  # the same SLA2 video either way
    assert scores(base, sla2)["psnr"] != scores(same, sla2)["psnr"]  # against another dense reference
    assert (base["settings"]["dense_weights"], same["settings"]["dense_weights"]) == ("base", "checkpoint")
    assert plain["settings"]["dense_weights"] is None
    assert "dense rows: the base weights" in (base_dir / "table.md").read_text()


def test_velocity_replay_runs_the_checkpoints_transformer(eval_main, tmp_path):
    """With every block selected SLA2 is dense attention, so the replay's velocity error is the transformer
    weights' alone: none against the checkpoint's own dense rows, the fine-tune's change against the folder's."""
    ckpt = _qat_checkpoint(tmp_path, "stage.optimizer.lr=0.05", "attention.sparsity=0.01")
    common = (f"ckpt={ckpt}", "attention.sparsity=0.01", "quant=false")
    same, _ = run_eval(eval_main, tmp_path / "same", *common)
    base, _ = run_eval(eval_main, tmp_path / "base", *common, "dense_weights=base")
    assert same["rows"][1]["metrics"]["velocity_rel_l1"] < 1e-5
    assert base["rows"][1]["metrics"]["velocity_rel_l1"] > 1e-3


def _qat_checkpoint(tmp_path, *overrides) -> Path:
    spec = importlib.util.spec_from_file_location("sla2_entry_train", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "model=tiny", "logger=none", "stage=qat", "stage.allow_untrained_router=true", "trainer.max_steps=1",
            f"output_root={tmp_path / 'train'}",
            f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0", "trainer.limit_val_batches=0",
            "callbacks.progress.refresh_rate=0", *overrides])
    train.main(cfg)
    return Path(cfg.ckpt_dir) / "last.ckpt"


def _bad_input_cases(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# no prompts\n")
    partial = tmp_path / "wan-folder"
    (partial / "transformer").mkdir(parents=True)
    (partial / "tokenizer").mkdir()
    misfit = tmp_path / "misfit.ckpt"
    torch.save({"state_dict": {"model.blocks.0.attn1.to_q.weight": torch.zeros(3, 3)}}, misfit)
    return [
        (f"prompts={tmp_path / 'absent.txt'}", "prompts: "),
        (f"prompts={empty}", "holds no prompts"),
        (f"model.path={partial}", "has no text_encoder/, vae/"),
        (f"backbones.dino={tmp_path / 'no-dino'}", "backbones.dino: no file or folder at"),
        (f"ckpt={misfit}", "does not fit this model"),
        ("dense_weights=latest", "dense_weights must be one of ['checkpoint', 'base'], got 'latest'"),
    ]


def test_bad_input_is_one_line_and_writes_nothing(eval_main, tmp_path, capsys):
    for override, message in _bad_input_cases(tmp_path):
        cfg = compose_eval(tmp_path / "out", override)
        with pytest.raises(SystemExit) as exit_info:
            eval_main(cfg)
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], (override, err)
        assert not list((tmp_path / "out").glob("eval/*/*/eval.json"))


def test_multirun_sweep_writes_one_combined_table(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), "-m", "attention.sparsity=0.9,0.95", *FAST, "max_prompts=1",
         "num_inference_steps=1", f"output_root={tmp_path}", f"random_models_dir={tmp_path / 'models'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables = list((tmp_path / "eval" / "sweeps").glob("*/table.md"))
    assert len(tables) == 1
    names = [line.split("|")[1].strip() for line in tables[0].read_text().splitlines() if line.startswith("| ")]
    # the means, then each SLA2 row minus its run's dense on the same prompts and noise
    assert names == ["Attention", "dense", "sla2 0.9 bf16", "sla2 0.95 bf16",
                     "Attention − dense", "sla2 0.9 bf16", "sla2 0.95 bf16"]
