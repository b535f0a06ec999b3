"""sla2-attnbench end to end at a tiny size: synthetic, tiny-Wan and tiny-testbed sources, saved sets, JSON and Markdown."""

import json
from pathlib import Path

import pytest
import torch

from sla2_train.attention.distill import Stage1Objective
from sla2_train.attnbench.cli import main
from sla2_train.attnbench.objectives import build_objective
from sla2_train.attnbench.sets import AttentionSet
from sla2_train.testbed.model_folder import TestbedFolder

TINY = ["--steps", "2", "--train-contents", "2", "--heldout-contents", "1", "--sparsities", "0.9", "--batch", "1"]


def test_synthetic_run_writes_the_table_and_the_sets(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--grid", "2", "4", "8", "--head-dim", "16", "--regimes", "local", "global", "--block-q", "16",
            "--block-k", "8", "--save-sets", str(tmp_path / "sets"), "--out", str(out), *TINY]
    assert main(args) == 0
    report = json.loads((out / "attnbench.json").read_text())
    assert report["command"].startswith("sla2-attnbench --grid 2 4 8")
    heads = [e for e in report["summary"] if e["layer"] != "overall"]
    assert [e["label"] for e in heads] == ["local", "global"]
    for e in heads:
        for router in ("identity", "learned", "bestmass"):
            assert 0 <= e[router]["recall"] <= 1 and 0 < e[router]["mass"] <= 1
        assert e["bestmass"]["recall"] == 1
    md = (out / "attnbench.md").read_text()
    assert "| 0.90 | overall |" in md and "gap closed" in md
    # the saved held-out set reloads to the same tensors the run measured on
    held = AttentionSet.load(tmp_path / "sets" / "heldout.safetensors")
    assert held.head_labels == [["local", "global"]] and held.layers[0][0][0].shape == (1, 2, 64, 16)


def test_tiny_wan_captures_through_the_capture_hook(tmp_path):
    args = ["--source", "wan", "--latent-shape", "4", "2", "8", "8", "--block-q", "16", "--block-k", "8",
            "--save-sets", str(tmp_path), "--out", str(tmp_path / "out"), *TINY]
    assert main(args) == 0
    train = AttentionSet.load(tmp_path / "train.safetensors")
    assert train.names == ["block_0", "block_1"]
    q, k, v = train.layers[0][0]
    assert q.shape == (1, 4, 2 * 4 * 4, 32) and torch.isfinite(q).all()
    assert len(train.layers[0]) == 2 * 3  # two contents at three noise levels
    # a count of draws (what --train-contents gives) takes a draw's noise levels together, also after reloading
    assert train.per_draw == 3
    first = train.first_draws(1)
    assert len(first.layers[0]) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(first.layers[0], train.layers[0]))
    with pytest.raises(ValueError, match="holds only 2"):
        train.first_draws(3)


def test_testbed_source_captures_rendered_clips_and_their_captions(tmp_path):
    """--source testbed: the folder's VAE and UMT5 encode rendered train / held-out scenes; the captures are the
    folder's transformer on them, and differ between the splits (different scenes)."""
    arch = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=48, out_channels=48,
                text_dim=32, freq_dim=32, ffn_dim=64, num_layers=1, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)
    encoder = dict(d_model=32, d_kv=8, num_heads=4, num_layers=1, d_ff=64, relative_attention_num_buckets=8)
    folder = TestbedFolder(arch, encoder, stats_clips=2, num_frames=5, height=32, width=64).build(tmp_path / "tb")
    args = ["--source", "testbed", "--model-path", str(folder), "--video-size", "5", "32", "64",
            "--train-contents", "2", "--heldout-contents", "1", "--validation-contents", "1", "--steps", "2",
            "--block-q", "16", "--block-k", "8", "--save-sets", str(tmp_path), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    train, held = (AttentionSet.load(tmp_path / f"{n}.safetensors") for n in ("train", "heldout"))
    q, k, v = train.layers[0][0]
    assert q.shape == (1, 2, 5 * 4 * 8, 16) and torch.isfinite(q).all()  # latents [48, 5, 8, 16], patch (1, 2, 2)
    assert len(train.layers[0]) == 2 * 3 and len(held.layers[0]) == 3  # contents × three noise levels
    assert not torch.allclose(train.layers[0][0][2], held.layers[0][0][2])


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["--objective", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown --objective 'nope'" in capsys.readouterr().err
    assert main(["--source", "files", "--train", str(tmp_path / "x.safetensors"), "--heldout", "y"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--source", "testbed", "--out", str(tmp_path)]) == 2
    assert "--source testbed needs --model-path" in capsys.readouterr().err


def test_the_benchmark_measures_the_configured_stage1_loss():
    objective = build_objective("stage")
    assert isinstance(objective, Stage1Objective)
    assert objective.terms and all(callable(t) and t.weight > 0 for t in objective.terms.values())
    with pytest.raises(ValueError, match="choose from"):
        build_objective("papr")


def test_recipe_defaults_are_the_training_configs():
    """The benchmark trains stage 1 as train.py does: every recipe default is read from conf/, so changing the
    config changes both (a benchmark default that drifts from training measures another recipe)."""
    from hydra import compose, initialize_config_dir

    from sla2_train.attnbench.cli import parser

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["stage=distill", "attention=sla2", "logger=none"])
    args = parser().parse_args([])
    assert args.lr == cfg.stage.optimizer.lr and args.tau == cfg.attention.tau
    assert args.weight_decay == cfg.stage.optimizer.weight_decay
    assert args.query_blocks == (cfg.stage.objective.query_blocks or 0)
    assert args.calibrate_at == cfg.stage.calibrate_alpha.when
