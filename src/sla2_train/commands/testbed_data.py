"""Render the procedural testbed (coloured shapes with captions) to lossless videos and manifests (docs/testbed.md).

    sla2-testbed-data OUT --num-videos 2000 --seed 0 --split train --workers 8
    sla2-testbed-data OUT_HELDOUT --num-videos 200 --seed 1 --split heldout
    sla2-prepare videos=OUT/videos captions=OUT/captions.jsonl out_dir=SHARDS clip.num_frames=17 \\
        clip.height=128 clip.width=256 encoders.model_path=MODEL

Re-running skips the videos already written; a larger --num-videos extends the set.
"""

from __future__ import annotations

import argparse
import os
import sys

from sla2_train.testbed.dataset import DatasetSpec, write_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--num-videos", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", help="train, or heldout (every scene holds a held-out combination)")
    p.add_argument("--frames", type=int, default=DatasetSpec.num_frames)
    p.add_argument("--height", type=int, default=DatasetSpec.height)
    p.add_argument("--width", type=int, default=DatasetSpec.width)
    p.add_argument("--fps", type=int, default=DatasetSpec.fps)
    p.add_argument("--format", default=DatasetSpec.format,
                   help="mp4 (lossless H.264 RGB, needs PyAV) or npy (uint8 frame arrays, ~1.7 MB per default clip)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        spec = DatasetSpec(a.seed, a.split, a.frames, a.height, a.width, a.fps, a.format)
        counts = write_dataset(a.out_dir, spec, a.num_videos, a.workers, progress=not a.no_progress)
    except (FileExistsError, ValueError) as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    print(f"{a.out_dir}: {counts['written']} videos written, {counts['skipped']} already there "
          f"({counts['videos']} {spec.split} scenes, seed {spec.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
