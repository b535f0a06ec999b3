"""Render a numbered set of testbed scenes to lossless video files, with the manifests the other tools read.

    OUT/testbed.json     the settings (a re-run with other settings into OUT is refused)
    OUT/videos/*.mp4     H.264 RGB at qp 0 (lossless): decodes back to the rendered pixels exactly; or
    OUT/videos/*.npy     with format "npy": the frames as uint8 [F, H, W, 3] arrays (no PyAV needed to write or read)
    OUT/captions.jsonl   {"video", "caption"} per line, paths relative to OUT/videos (sla2-prepare's manifest)
    OUT/scenes.jsonl     {"video", "caption", "scene"} per line: the specs, for evaluation
    OUT/prompts.txt      the captions, one per line, in video order (eval.py's prompt file)

Scene i depends only on (seed, split, i, frames, aspect): a larger --num-videos extends a dataset, and a re-run
skips the videos already written.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .captions import caption
from .render import render
from .scenes import SPLITS, SceneSpec, check_fits, sample_scene

CODEC = "libx264rgb"  # lossless at qp 0, and mp4's time base keeps 1/fps steps exact for the project's reader
FORMATS = ("mp4", "npy")


@dataclass(frozen=True)
class DatasetSpec:
    seed: int = 0
    split: str = "train"
    num_frames: int = 17  # 4k+1, what sla2-prepare's clip.num_frames takes
    height: int = 128
    width: int = 256
    fps: int = 16
    format: str = "mp4"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.num_frames < 2 or self.height < 16 or self.width < 16 or self.height % 2 or self.width % 2:
            raise ValueError(f"--frames must be >= 2 and --height/--width even and >= 16, got "
                             f"{self.num_frames}, {self.height}, {self.width}")
        if self.fps < 1:
            raise ValueError(f"--fps must be >= 1, got {self.fps}")
        check_fits(self.num_frames, self.width / self.height)

    def scene(self, index: int) -> SceneSpec:
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        return sample_scene(rng, self.split, self.num_frames, self.width / self.height)

    def video_name(self, index: int) -> str:
        return f"{self.split}-{index:06d}.{self.format}"


def _encoder():
    """PyAV and its lossless RGB H.264 encoder, or a one-line error saying what to do instead."""
    try:
        import av  # only for mp4: frame arrays need no PyAV
    except ImportError:
        raise ValueError("--format mp4 needs PyAV (pip install av); "
                         "--format npy writes frame arrays without it") from None
    try:
        av.codec.Codec(CODEC, "w")
    except Exception:  # PyAV raises its own error types for an unknown codec, which vary between releases
        raise ValueError(f"this PyAV build has no {CODEC} encoder; use --format npy") from None
    return av


@contextmanager
def _written_whole(path: str | os.PathLike):
    """Yield a temporary name to write to; it becomes `path` only when the writing finished, so an interrupted run
    leaves no partial file that a re-run would skip (and none with a video suffix that sla2-prepare would find)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    yield tmp
    os.replace(tmp, path)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int) -> None:
    """uint8 [F, H, W, 3] RGB → a lossless H.264 RGB .mp4."""
    av = _encoder()
    with _written_whole(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream(CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr24"
        stream.options = {"qp": "0", "preset": "veryfast"}
        stream.codec_context.thread_count = 1  # parallelism comes from the worker processes
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_array(path: str | os.PathLike, frames: np.ndarray) -> None:
    """uint8 [F, H, W, 3] → a .npy file."""
    with _written_whole(path) as tmp, open(tmp, "wb") as f:
        np.save(f, frames, allow_pickle=False)


def _render_one(job: tuple[DatasetSpec, int, str]) -> int:
    spec, index, path = job
    frames = render(spec.scene(index), spec.num_frames, spec.height, spec.width)
    if spec.format == "npy":
        write_array(path, frames)
    else:
        write_video(path, frames, spec.fps)
    return index


def _check_settings(out: Path, spec: DatasetSpec) -> None:
    settings = out / "testbed.json"
    if settings.is_file():
        old = json.loads(settings.read_text())
        if old != asdict(spec):
            diff = ", ".join(f"{k}={old.get(k)!r} there, {v!r} now" for k, v in asdict(spec).items() if old.get(k) != v)
            raise FileExistsError(f"{out} holds a testbed written with other settings ({diff}); "
                                  f"choose another output folder or remove it")
    else:
        out.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps(asdict(spec), indent=1) + "\n")


def write_dataset(out_dir: str | os.PathLike, spec: DatasetSpec, num_videos: int, workers: int = 1,
                  progress: bool = True) -> dict:
    """Render scenes 0 … num_videos−1 of `spec` into out_dir (layout in the module doc); returns counts."""
    if num_videos < 1:
        raise ValueError(f"--num-videos must be at least 1, got {num_videos}")
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if spec.format == "mp4":
        _encoder()  # fail before anything is written
    out = Path(out_dir)
    _check_settings(out, spec)
    videos = out / "videos"
    videos.mkdir(exist_ok=True)
    todo = [(spec, i, str(videos / spec.video_name(i))) for i in range(num_videos)
            if not (videos / spec.video_name(i)).is_file()]
    bar = tqdm(total=len(todo), desc=f"render {spec.split}", unit="video", disable=not progress)
    if workers == 1 or len(todo) <= 1:
        for job in todo:
            _render_one(job)
            bar.update()
    else:
        with multiprocessing.get_context().Pool(min(workers, len(todo))) as pool:
            for _ in pool.imap_unordered(_render_one, todo, chunksize=4):
                bar.update()
    bar.close()
    rows = [(spec.video_name(i), spec.scene(i)) for i in range(num_videos)]
    texts = [caption(scene) for _, scene in rows]
    with open(out / "captions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"video": name, "caption": text}) + "\n" for (name, _), text in zip(rows, texts))
    with open(out / "scenes.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"video": name, "caption": text, "scene": scene.to_dict()}) + "\n"
                     for (name, scene), text in zip(rows, texts))
    (out / "prompts.txt").write_text(
        f"# {spec.split} testbed captions, seed {spec.seed}, in the order of scenes.jsonl\n" + "\n".join(texts) + "\n",
        encoding="utf-8")
    return {"written": len(todo), "skipped": num_videos - len(todo), "videos": num_videos}


def read_scenes(path: str | os.PathLike) -> list[tuple[str, str, SceneSpec]]:
    """(video name, caption, scene) per line of a scenes.jsonl."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["video"], r["caption"], SceneSpec.from_dict(r["scene"])) for r in rows]
