"""Write synthetic latent/text shards in the real format (for loader benchmarks or offline smoke runs).

    sla2-make-synthetic OUT_DIR --num-samples 64 --latent-shape 16 21 60 104 --text-dim 4096 --max-text-len 512

`data=synthetic` does the same on the fly into a cache; this is for a fixed folder you point
`data=webdataset data.train_shards=OUT_DIR` at.
"""

from __future__ import annotations

import argparse
import sys

from sla2_train.data import write_synthetic_shards


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--latent-shape", type=int, nargs=4, default=[4, 3, 14, 18], metavar=("C", "F", "H", "W"))
    p.add_argument("--text-dim", type=int, default=32)
    p.add_argument("--max-text-len", type=int, default=16)
    p.add_argument("--samples-per-shard", type=int, default=8)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        index = write_synthetic_shards(a.out_dir, a.num_samples, a.latent_shape, a.text_dim, a.max_text_len,
                                       a.samples_per_shard, a.seed, a.dtype)
    except (FileExistsError, ValueError) as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 1
    print(f"wrote {index['num_samples']} samples in {len(index['shards'])} shards to {a.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
