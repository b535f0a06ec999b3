"""sla2-testbed-data: files decode back to the rendered frames through the preparation reader, the manifest is
read by its discovery as-is, re-runs skip finished videos, and the output is a function of the seed."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from sla2_train.commands.testbed_data import main
from sla2_train.data.prep import ClipSpec, discover, load_clip
from sla2_train.evaluation.prompts import load_prompts
from sla2_train.testbed import HELDOUT_COMBINATIONS, caption, render
from sla2_train.testbed.dataset import DatasetSpec, read_scenes, write_dataset


@pytest.mark.parametrize("frames,height,width,fmt", [(17, 128, 256, "mp4"), (9, 48, 80, "mp4"), (9, 48, 80, "npy")])
def test_written_videos_decode_exactly_and_manifests_agree(tmp_path, frames, height, width, fmt):
    spec = DatasetSpec(seed=int(np.random.default_rng().integers(1000)), split="heldout", num_frames=frames,
                       height=height, width=width, fps=8, format=fmt)
    counts = write_dataset(tmp_path, spec, 5, workers=2, progress=False)
    assert counts == {"written": 5, "skipped": 0, "videos": 5}
    items = discover(tmp_path / "videos", tmp_path / "captions.jsonl")
    scenes = {name: (text, scene) for name, text, scene in read_scenes(tmp_path / "scenes.jsonl")}
    assert sorted(it.relpath for it in items) == sorted(scenes) == [f"heldout-{i:06d}.{fmt}" for i in range(5)]
    clip = ClipSpec(num_frames=frames, fps=8, height=height, width=width)
    for it in items:
        text, scene = scenes[it.relpath]
        assert it.caption == text == caption(scene)
        assert any(o.combination in HELDOUT_COMBINATIONS for o in scene.objects)
        assert np.array_equal(load_clip(it.path, clip).numpy(), render(scene, frames, height, width))
    assert load_prompts(str(tmp_path / "prompts.txt")) == [scenes[f"heldout-{i:06d}.{fmt}"][0] for i in range(5)]
    assert not list((tmp_path / "videos").glob(".*"))  # no temporary files left


def test_rerun_skips_extends_and_refuses_other_settings(tmp_path, capsys):
    args = [str(tmp_path / "a"), "--frames", "5", "--height", "32", "--width", "64", "--no-progress"]
    assert main([*args, "--num-videos", "3", "--workers", "1"]) == 0
    first = (tmp_path / "a/videos/train-000000.mp4").stat().st_mtime_ns
    assert main([*args, "--num-videos", "4", "--workers", "2"]) == 0
    assert "1 videos written, 3 already there" in capsys.readouterr().out
    assert (tmp_path / "a/videos/train-000000.mp4").stat().st_mtime_ns == first
    # The same seed into another folder in one go gives the same scenes and the same bytes.
    assert main([str(tmp_path / "b"), "--frames", "5", "--height", "32", "--width", "64", "--no-progress",
                 "--num-videos", "4"]) == 0
    for name in ("scenes.jsonl", "captions.jsonl", "prompts.txt", "videos/train-000003.mp4"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert main([*args, "--num-videos", "4", "--seed", "1"]) == 2
    assert "other settings (seed=0 there, 1 now)" in capsys.readouterr().err
    assert len((tmp_path / "a/captions.jsonl").read_text().splitlines()) == 4
    assert json.loads((tmp_path / "a/testbed.json").read_text())["num_frames"] == 5


@pytest.mark.parametrize("argv,message", [
    (["--split", "test"], "--split must be one of train, heldout, got 'test'"),
    (["--num-videos", "0"], "--num-videos must be at least 1, got 0"),
    (["--height", "31"], "--frames must be >= 2 and --height/--width even and >= 16"),
    (["--frames", "400"], "num_frames=400 is too long"),
    (["--format", "gif"], "--format must be one of mp4, npy, got 'gif'"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, argv, message):
    assert main([str(tmp_path / "out"), "--no-progress", "--num-videos", "1", *argv]) == 2  # the last value counts
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_mp4_without_pyav_names_the_way_out_and_npy_needs_none(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    assert main([str(tmp_path / "a"), "--no-progress", "--num-videos", "2", "--height", "32", "--width", "64"]) == 2
    assert "--format mp4 needs PyAV (pip install av); --format npy writes frame arrays without it" in \
        capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main([str(tmp_path / "b"), "--no-progress", "--num-videos", "2", "--height", "32", "--width", "64",
                 "--format", "npy", "--workers", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "b/videos").iterdir()) == ["train-000000.npy", "train-000001.npy"]
