"""Preparation: videos + captions → tiny Wan VAE / UMT5 (loaded from disk) → shards → DataModule; resume; ranks."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sla2_train.data import LatentDataModule, collate, read_index
from sla2_train.data.prep import ClipSpec, EncoderSpec, OutputSpec, Preparer, TextEncoder, VaeEncoder, discover, load_clip
from sla2_train.data.prep import pipeline
from sla2_train.data.prep.encoders import component_dir

CLIP = ClipSpec(num_frames=9, fps=8, height=32, width=48)  # 9 frames → 3 latent frames; 32x48 → 4x6


def _video_folder(root: Path, rng, write_video, caption):
    """Good videos of several sizes/lengths/containers, plus one too short, one broken, one without caption."""
    root.mkdir()
    good = {"a/clip_one.mp4": (20, 12, 64, 48), "a/clip_two.mkv": (14, 8, 80, 40), "b/clip three.mp4": (30, 24, 48, 48)}
    for i, (rel, (n, fps, w, h)) in enumerate(good.items()):
        (root / rel).parent.mkdir(exist_ok=True)
        write_video(root / rel, n, fps, w, h, seed=i)
        (root / rel).with_suffix(".txt").write_text(caption(rng) + "\n")
    write_video(root / "short.mp4", 4, 8, 48, 32)
    (root / "short.txt").write_text(caption(rng))
    (root / "broken.mp4").write_bytes(os.urandom(3000))
    (root / "broken.txt").write_text(caption(rng))
    write_video(root / "nocaption.mp4", 12, 8, 48, 32)
    (root / "empty_caption.txt").write_text("   \n")
    write_video(root / "empty_caption.mp4", 12, 8, 48, 32)
    return sorted(good)


def _captioned_videos(folder: Path, names, write_video, caption):
    """One short valid video with a sidecar caption per name."""
    rng = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    folder.mkdir()
    for name in names:
        write_video(folder / f"{name}.mp4", 10, 8, 48, 32)
        (folder / f"{name}.txt").write_text(caption(rng))


def _preparer(videos, out, wan, **output):
    enc = EncoderSpec(model_path=str(wan), device="cpu", text_dtype="float32")
    return Preparer(str(videos), str(out), clip=CLIP, encoders=enc, output=OutputSpec(samples_per_shard=2, **output),
                    decode_workers=0, progress=False)


def test_discover_sidecars_and_manifests(tmp_path):
    (tmp_path / "v").mkdir()
    for name in ("x.mp4", "y.webm", "z.mov"):
        (tmp_path / "v" / name).write_bytes(b"")
    (tmp_path / "v" / "x.txt").write_text("  a  fox \n")
    items = {Path(it.path).name: it for it in discover(tmp_path / "v")}
    assert items["x.mp4"].caption == "a  fox" and items["y.webm"].caption is None and len(items) == 3
    assert len({it.key for it in items.values()}) == 3 and all("." not in it.key for it in items.values())
    (tmp_path / "m.jsonl").write_text('{"video": "y.webm", "caption": "birds"}\n{"path": "gone.mp4", "text": "t"}\n')
    items = {it.relpath: it for it in discover(tmp_path / "v", tmp_path / "m.jsonl")}
    assert items["y.webm"].caption == "birds" and items["x.mp4"].caption is None and items["gone.mp4"].caption == "t"
    (tmp_path / "m.csv").write_text("file,prompt\nz.mov,a river\n")
    assert {it.relpath: it.caption for it in discover(tmp_path / "v", tmp_path / "m.csv")}["z.mov"] == "a river"
    # Absolute paths into the video folder name the same files (not extra items beside captionless ones).
    (tmp_path / "abs.jsonl").write_text(json.dumps({"video": str(tmp_path / "v" / "z.mov"), "caption": "a boat"}) + "\n")
    items = discover(tmp_path / "v", tmp_path / "abs.jsonl")
    assert len(items) == 3 and {it.relpath: it.caption for it in items}["z.mov"] == "a boat"
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        discover(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="caption manifest not found"):
        discover(tmp_path / "v", tmp_path / "none.jsonl")


def test_encoders_match_wan_pipeline_conventions(tiny_wan, tmp_path, random_caption):
    caption = random_caption
    from diffusers import WanPipeline

    spec = EncoderSpec(model_path=str(tiny_wan), device="cpu", text_dtype="float32")
    vae, text = VaeEncoder(spec, torch.device("cpu")), TextEncoder(spec, torch.device("cpu"))
    clip = torch.randint(0, 256, (9, 32, 48, 3), dtype=torch.uint8)
    latents = vae(clip)
    assert latents.shape == (4, 3, 4, 6)
    # Undo the normalisation the way WanPipeline does before decoding: z = latents / (1/std) + mean.
    x = clip.permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    z = vae.vae.encode(x).latent_dist.mode()[0]
    cfg = vae.vae.config
    restored = latents * torch.tensor(cfg.latents_std).view(4, 1, 1, 1) + torch.tensor(cfg.latents_mean).view(4, 1, 1, 1)
    torch.testing.assert_close(restored, z, rtol=1e-5, atol=1e-5)
    # Text: ours (unpadded, padded at collate) equals WanPipeline's own 512-token encoding.
    rng = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    captions = [caption(rng), "  a &amp; fox\n\n runs  ", caption(rng)]
    ours = text(captions)
    fake_pipe = SimpleNamespace(tokenizer=text.tokenizer, text_encoder=text.model)
    theirs = WanPipeline._get_t5_prompt_embeds(fake_pipe, captions, max_sequence_length=512, device="cpu", dtype=torch.float32)
    samples = [{"key": str(i), "latents": latents, "text_embeds": t} for i, t in enumerate(ours)]
    batch = collate(samples, text_len=512)
    torch.testing.assert_close(batch["text_embeds"], theirs, rtol=1e-5, atol=1e-5)
    assert [t.shape[0] for t in ours] == batch["text_mask"].sum(1).tolist() and len({t.shape[0] for t in ours}) > 1
    with pytest.raises(FileNotFoundError, match="vae folder not found"):
        component_dir(None, str(tmp_path), "vae")


def test_prepare_stream_resume_and_refuse(tiny_wan, tmp_path, video_writer, random_caption):
    caption, write_video = random_caption, video_writer
    rng = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    good = _video_folder(tmp_path / "videos", rng, video_writer, caption)
    out = tmp_path / "shards"
    report = _preparer(tmp_path / "videos", out, tiny_wan).run()
    assert report.written == 3
    assert dict(report.skipped) == {"too_short": 1, "unreadable_video": 1, "missing_caption": 2}
    index = read_index(out)
    assert index["complete"] and index["num_samples"] == 3 and index["latent_shape"] == [4, 3, 4, 6] and index["text_dim"] == 16
    assert index["skipped"] == {"too_short": 1, "unreadable_video": 1, "missing_caption": 2}
    assert sorted(index["sources"].values()) == good and len(index["source_hashes"]) == 3
    # The shards stream through the training DataModule, and hold exactly what the encoders produce.
    dm = LatentDataModule(str(out), str(out), batch_size=2, num_workers=0, text_len=24, text_dim=16)
    batches = list(dm.val_dataloader())
    keys = [k for b in batches for k in b["keys"]]
    assert sorted(index["sources"][k] for k in keys) == good
    spec = EncoderSpec(model_path=str(tiny_wan), device="cpu", text_dtype="float32")
    vae, text = VaeEncoder(spec, torch.device("cpu")), TextEncoder(spec, torch.device("cpu"))
    first = batches[0]
    src = tmp_path / "videos" / index["sources"][first["keys"][0]]
    expected = vae(load_clip(str(src), CLIP)).to(torch.bfloat16)  # the shards hold bfloat16, and batches keep it
    torch.testing.assert_close(first["latents"][0], expected, rtol=0, atol=0)
    (embeds,) = text([src.with_suffix(".txt").read_text()])
    n = embeds.shape[0]
    assert first["text_mask"][0].sum() == n
    torch.testing.assert_close(first["text_embeds"][0, :n], embeds.to(torch.bfloat16), rtol=0, atol=0)

    # Re-run: nothing redone; a new video is added; a crash's leftovers are cleaned and redone.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    again = _preparer(tmp_path / "videos", out, tiny_wan).run()
    assert again.written == 0 and again.already_done == 3 and again.previously_failed == 4
    write_video(tmp_path / "videos" / "late.mp4", 12, 8, 48, 32, seed=9)
    (tmp_path / "videos" / "late.txt").write_text("a fox")
    (out / "shard-r000-000099.tar.partial").write_bytes(b"half")
    (out / "shard-r000-000098.tar").write_bytes(b"no record")
    third = _preparer(tmp_path / "videos", out, tiny_wan).run()
    assert third.written == 1 and third.already_done == 3
    assert not (out / "shard-r000-000099.tar.partial").exists() and not (out / "shard-r000-000098.tar").exists()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p.name in stamps} == stamps
    assert read_index(out)["num_samples"] == 4
    # A finished shard damaged since (a truncated copy) is not done: its samples are encoded again.
    damaged = next(out / s["name"] for s in read_index(out)["shards"] if s["num_samples"] == 2)
    damaged.write_bytes(damaged.read_bytes()[:-1024])
    fourth = _preparer(tmp_path / "videos", out, tiny_wan).run()
    assert fourth.written == 2 and fourth.already_done == 2
    assert read_index(out)["num_samples"] == 4 and damaged.name not in {s["name"] for s in read_index(out)["shards"]}
    # Other settings into the same folder: refused, unless told to overwrite.
    other = Preparer(str(tmp_path / "videos"), str(out), clip=ClipSpec(num_frames=5, fps=8, height=32, width=48),
                     encoders=EncoderSpec(model_path=str(tiny_wan), device="cpu"), decode_workers=0, progress=False)
    with pytest.raises(FileExistsError, match="other settings \\(clip"):
        other.run()
    other.output = OutputSpec(overwrite=True)
    redone = other.run()
    assert redone.written == 4 and redone.already_done == 0 and redone.skipped["too_short"] == 1
    assert read_index(out)["latent_shape"] == [4, 2, 4, 6]


def test_two_processes_split_the_work_and_the_stream(tiny_wan, tmp_path, monkeypatch, video_writer, random_caption, caplog):
    caption, write_video = random_caption, video_writer
    rng = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    (tmp_path / "videos").mkdir()
    for i in range(6):
        write_video(tmp_path / "videos" / f"v{i}.mp4", 10, 8, 48 + 16 * (i % 2), 32, seed=i)
        (tmp_path / "videos" / f"v{i}.txt").write_text(caption(rng))
    out = tmp_path / "shards"
    written = []
    for rank in (0, 1):  # as torchrun would start them; the second finishes last and completes the index
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        report = _preparer(tmp_path / "videos", out, tiny_wan).run()
        written.append(report.written)
        assert report.index["complete"] is (rank == 1)
        # Training on the folder meanwhile works, but says that it gets only part of the dataset.
        with caplog.at_level(logging.WARNING, logger="sla2_train.data"):
            caplog.clear()
            LatentDataModule(str(out), batch_size=1, num_workers=0).setup("fit")
        assert any("preparation is not finished" in r.getMessage() for r in caplog.records) is (rank == 0)
    assert sum(written) == 6 and min(written) >= 1
    index = read_index(out)
    assert index["num_samples"] == 6 and {s["name"][:10] for s in index["shards"]} == {"shard-r000", "shard-r001"}
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        dm = LatentDataModule(str(out), str(out), batch_size=2, num_workers=2, text_len=16)
        seen += [k for b in dm.val_dataloader() for k in b["keys"]]
    assert sorted(seen) == sorted(index["sources"]) and len(seen) == len(set(seen))


def test_entry_point_runs_and_fails_clearly(tiny_wan, tmp_path, video_writer, random_caption, monkeypatch, capsys):
    rng = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    (tmp_path / "videos").mkdir()
    video_writer(tmp_path / "videos" / "v.mp4", 10, 8, 48, 32)
    (tmp_path / "videos" / "v.txt").write_text(random_caption(rng))
    args = ["sla2-prepare", f"videos={tmp_path}/videos", f"out_dir={tmp_path}/out", f"encoders.model_path={tiny_wan}",
            "encoders.device=cpu", "encoders.text_dtype=float32", "clip.num_frames=9", "clip.fps=8", "clip.height=32",
            "clip.width=48", "decode_workers=1", "progress=false"]
    from sla2_train.commands.prepare import main  # `sla2-prepare`, run in this process

    monkeypatch.chdir(tmp_path)  # Hydra's log folder goes to ./outputs
    monkeypatch.setattr(sys, "argv", args)
    main()
    assert "wrote 1" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "index.json").read_text())["num_samples"] == 1
    logs = set((tmp_path / "outputs" / "prepare").iterdir())
    (tmp_path / "no_videos").mkdir()
    for override, message in [(f"videos={tmp_path}/missing", "video folder not found"),
                              (f"videos={tmp_path}/no_videos", f"videos: no video files (.mp4, "),
                              ("clip.num_frames=8", "must be 4k+1"),
                              ("clip.fps=fast", "clip.fps must be a number, got 'fast'"),
                              ("encoders.model_path=/nonexistent", "vae folder not found"),
                              ("encoders.model_path", "encoders.model_path is required")]:
        key = override.split("=")[0]
        kept = [a for a in args if not a.startswith(key + "=")]
        monkeypatch.setattr(sys, "argv", kept + ([override] if "=" in override else []) + [f"out_dir={tmp_path}/o2"])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not (tmp_path / "o2").exists(), "a failed start left an output folder behind"
        assert set((tmp_path / "outputs" / "prepare").iterdir()) == logs, "a failed start left a log folder behind"


def test_a_limited_run_leaves_the_index_partial(tiny_wan, tmp_path, video_writer, random_caption):
    _captioned_videos(tmp_path / "videos", ["a", "b", "c"], video_writer, random_caption)
    out = tmp_path / "shards"
    first = _preparer(tmp_path / "videos", out, tiny_wan)
    first.limit = 2
    report = first.run()
    assert report.written == 2 and report.index["complete"] is False
    assert "partial (limit reached" in report.summary()
    assert read_index(out)["complete"] is False
    rest = _preparer(tmp_path / "videos", out, tiny_wan).run()  # the same command without limit finishes it
    assert rest.written == 1 and rest.already_done == 2 and read_index(out)["complete"] is True


def test_any_per_video_decode_error_is_skipped_not_fatal(tiny_wan, tmp_path, video_writer, random_caption, monkeypatch):
    from sla2_train.data.prep import pipeline

    _captioned_videos(tmp_path / "videos", ("ok", "odd"), video_writer, random_caption)

    def load(path, spec):
        if path.endswith("odd.mp4"):
            raise ZeroDivisionError("an error load_clip does not classify")
        return load_clip(path, spec)

    monkeypatch.setattr(pipeline, "load_clip", load)
    report = _preparer(tmp_path / "videos", tmp_path / "out", tiny_wan).run()
    assert report.written == 1 and dict(report.skipped) == {"unreadable_video": 1}
    assert read_index(tmp_path / "out")["skipped"] == {"unreadable_video": 1}


# The pipeline's dataset, whose decoder dies of a segfault (as libav can) on any video named killer. A module of its
# own on sys.path, since the spawned decode worker imports the class by name (the tests folder is no package).
KILLER_CLIPS = """
import os
import signal

from sla2_train.data.prep.pipeline import _Clips


class KillerClips(_Clips):
    def decode(self, item):
        if item.path.endswith("killer.mp4"):
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().decode(item)
"""


def test_a_video_that_kills_its_decoder_is_skipped_on_the_next_run(tiny_wan, tmp_path, video_writer, random_caption,
                                                                   monkeypatch):
    """A libav segfault takes the decode worker down with it; the re-run must not die on the same file again."""
    _captioned_videos(tmp_path / "videos", ("ok", "killer"), video_writer, random_caption)
    (tmp_path / "sla2_killer_clips.py").write_text(KILLER_CLIPS)
    monkeypatch.syspath_prepend(str(tmp_path))  # the spawned decode worker inherits the path
    monkeypatch.setattr(pipeline, "_Clips", importlib.import_module("sla2_killer_clips").KillerClips)
    prep = _preparer(tmp_path / "videos", tmp_path / "out", tiny_wan)
    prep.decode_workers = 1
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        prep.run()
    report = prep.run()  # the same run again, the killer still in the folder
    assert report.written == 1 and report.previously_failed == 1
    index = read_index(tmp_path / "out")
    assert index["num_samples"] == 1 and index["skipped"] == {"crashed_decoder": 1}
    assert not list((tmp_path / "out").glob(".decoding-*"))
