"""Prompt sources, mp4 round trips, the results folder and the report tables."""

import json

import pytest
import torch

from sla2_train.evaluation import combined_table, load_prompts
from sla2_train.evaluation.precision import cast_keeping_fp32
from sla2_train.evaluation.report import markdown_table
from sla2_train.evaluation.settings import results_folder
from sla2_train.evaluation.video_io import read_mp4, to_uint8, write_mp4
from sla2_train.models import ConfigError


def test_shipped_prompt_set_and_files(tmp_path):
    shipped = load_prompts("vbench_style")
    assert len(shipped) >= 12 and all(p and not p.startswith("#") for p in shipped)
    assert load_prompts("vbench_style", limit=2) == shipped[:2]
    f = tmp_path / "mine.txt"
    f.write_text("# comment\n\n  a cat  \nwaves\n")
    assert load_prompts(str(f)) == ["a cat", "waves"]


def test_bad_prompt_sources_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="prompts: .*absent.txt.* is neither a prompt file nor a shipped"):
        load_prompts(str(tmp_path / "absent.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        load_prompts(str(empty))
    with pytest.raises(ConfigError, match="max_prompts"):
        load_prompts("vbench_style", limit=0)


@pytest.mark.parametrize("shape", [(5, 32, 48, 3), (3, 17, 23, 3)])
def test_mp4_round_trip(tmp_path, shape):
    # Smooth content (H.264 is lossy): a gradient that moves per frame.
    f, h, w, _ = shape
    t, y, x = torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij")
    video = torch.stack([(x * 4 + t * 9) % 256, (y * 5) % 256, torch.full_like(x, 128)], -1).to(torch.uint8)
    back = read_mp4(write_mp4(tmp_path / "v.mp4", video, fps=16))
    assert back.shape[0] == f and back.shape[1] >= h and back.shape[2] >= w
    assert (back[:, :h, :w].float() - video.float()).abs().mean() < 4


def test_to_uint8_rounds_and_clips():
    assert to_uint8([[[[0.0, 0.5, 1.2]]]]).tolist() == [[[[0, 128, 255]]]]


def test_results_folder_is_per_settings_and_never_reused(tmp_path):
    a = results_folder(tmp_path, {"steps": 10})
    assert results_folder(tmp_path, {"steps": 10}) == a  # nothing written yet: same folder
    (a / "eval.json").write_text("{}")
    again = results_folder(tmp_path, {"steps": 10})
    assert again != a and again.name == a.name + "-1"
    assert results_folder(tmp_path, {"steps": 20}).name != a.name


def _row(name, **metrics):
    return {"name": name, "metrics": metrics, "seconds_per_video": 2.0, "speedup": 1.0, "attention_share": 0.25}


def test_markdown_table_layout():
    table = markdown_table([_row("dense", temporal_flickering=0.9), _row("sla2 0.97 bf16", temporal_flickering=0.8,
                                                                          psnr=30.0)])
    lines = table.splitlines()
    assert lines[0].startswith("| Attention | Temporal Flicker | PSNR vs dense (dB) |") and "s/video" in lines[0]
    assert lines[2].startswith("| dense | 0.9 | – |") and "25.0%" in lines[2]
    assert len(lines) == 4


def test_markdown_table_shows_every_computed_metric():
    """The testbed's prompt-following columns, and a metric the table has no label for, are never dropped."""
    table = markdown_table([_row("dense", temporal_flickering=0.9, prompt_following=0.5, prompt_following_chance=0.1,
                                 my_metric=0.25)])
    head, _, dense = table.splitlines()
    assert head.startswith("| Attention | Temporal Flicker | Prompt following | Prompt following, chance | my_metric |")
    assert dense.startswith("| dense | 0.9 | 0.5 | 0.1 | 0.25 |")


def test_combined_table_has_one_dense_row_and_every_sla2_row(tmp_path):
    settings = {"model": "tiny", "random_weights": True, "model_path": "x", "checkpoint": None, "num_frames": 9,
                "height": 8, "width": 8, "fps": 16, "num_inference_steps": 2, "scheduler": {"_target_": "a.B"},
                "guidance_scale": 5.0, "prompts": ["p"], "prompt_set": "s", "videos_per_prompt": 1, "seeds": [0],
                "dtype": "float32", "device": "cpu"}
    folders = []
    for s in (0.9, 0.95):
        f = tmp_path / str(s)
        f.mkdir()
        (f / "eval.json").write_text(json.dumps({"settings": settings, "rows": [_row("dense"), _row(f"sla2 {s}")]}))
        folders.append(f)
    names = [line.split("|")[1].strip() for line in combined_table(folders).splitlines() if line.startswith("| ")]
    assert names == ["Attention", "dense", "sla2 0.9", "sla2 0.95"]


def test_cast_keeps_the_float32_modules():
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                  out_channels=4, text_dim=8, freq_dim=8, ffn_dim=16, num_layers=1)
    cast_keeping_fp32(model, torch.bfloat16)
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.blocks[0].norm2.weight.dtype == torch.float32
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert model.scale_shift_table.dtype == torch.float32


def test_missing_video_writer_stops_before_sampling(monkeypatch):
    import sys

    from sla2_train.evaluation import video_io
    from sla2_train.models import ConfigError

    monkeypatch.setitem(sys.modules, "av", None)  # import av then raises ImportError
    with pytest.raises(ConfigError, match="pip install av"):
        video_io.require_video_writer()
