"""Measure the testbed on its own ground truth: render time per clip, and the semantic metric on rendered videos
with their captions and with shuffled ones (the chance level).

    python -m sla2_train.testbed.selfcheck --num-scenes 200 --split heldout --frames 17 --height 128 --width 256
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .captions import caption
from .render import render
from .scenes import sample_scene
from .semantic import prompt_following


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-scenes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    scenes = [sample_scene(rng, a.split, a.frames, a.width / a.height) for _ in range(a.num_scenes)]
    start = time.perf_counter()
    videos = [render(s, a.frames, a.height, a.width) for s in scenes]
    render_ms = (time.perf_counter() - start) / len(scenes) * 1e3
    start = time.perf_counter()
    result = prompt_following(videos, [caption(s) for s in scenes])
    score_ms = (time.perf_counter() - start) / len(scenes) * 1e3  # each video is scored twice (own, shuffled)
    print(json.dumps({"render_ms_per_clip": round(render_ms, 2), "metric_ms_per_video": round(score_ms, 2),
                      **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}}, indent=1))


if __name__ == "__main__":
    main()
