"""Measure training-loader throughput (samples/s) at the real Wan-1.3B 480p sample size.

    python scripts/bench_loader.py                       # synthetic shards [16,21,60,104] + text [128..512, 4096], 2 workers
    python scripts/bench_loader.py --shards DIR --workers 4 --batch-size 2

Times the LatentDataModule train loader (split shards → safetensors decode → finite check → collate) in
steady state, after the workers have filled their shuffle buffers. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date

import torch

from sla2_train.data import LatentDataModule, read_index, write_synthetic_shards


def _make_shards(folder: str, num: int, per_shard: int) -> None:
    t0 = time.perf_counter()
    write_synthetic_shards(folder, num, latent_shape=(16, 21, 60, 104), text_dim=4096, max_text_len=512,
                           samples_per_shard=per_shard, seed=0, dtype="bfloat16")
    print(f"# wrote {num} synthetic samples in {time.perf_counter() - t0:.1f}s to {folder}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", help="existing shard folder (default: generate synthetic ones in a temp folder)")
    p.add_argument("--num-samples", type=int, default=48)
    p.add_argument("--samples-per-shard", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--batches", type=int, default=60, help="timed batches")
    p.add_argument("--warmup", type=int, default=20, help="untimed batches first (shuffle buffers fill)")
    p.add_argument("--shuffle-buffer", type=int, default=16)
    p.add_argument("--pin-memory", action="store_true")
    a = p.parse_args()

    tmp = None
    folder = a.shards
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="sla2-bench-")
        folder = os.path.join(tmp.name, "shards")
        _make_shards(folder, a.num_samples, a.samples_per_shard)
    index = read_index(folder)
    stored = sum(s["bytes"] for s in index["shards"]) / index["num_samples"]

    dm = LatentDataModule(folder, batch_size=a.batch_size, num_workers=a.workers, text_len=512,
                          epoch_length=a.warmup + a.batches, shuffle_buffer=a.shuffle_buffer, pin_memory=a.pin_memory)
    it = iter(dm.train_dataloader())
    t_start = time.perf_counter()
    for _ in range(a.warmup):
        next(it)
    t_warm = time.perf_counter()
    out_bytes = 0
    for _ in range(a.batches):
        batch = next(it)
        out_bytes += sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor))
    elapsed = time.perf_counter() - t_warm
    samples = a.batches * a.batch_size
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "latent_shape": index["latent_shape"], "text_dim": index["text_dim"], "text_len": index["text_len"],
        "workers": a.workers, "batch_size": a.batch_size, "pin_memory": a.pin_memory,
        "samples_per_s": round(samples / elapsed, 2),
        "stored_MB_per_sample": round(stored / 1e6, 2),
        "read_MB_per_s": round(samples * stored / elapsed / 1e6, 1),
        "batch_MB_per_s": round(out_bytes / elapsed / 1e6, 1),
        "first_batches_s": round(t_warm - t_start, 2),
        "skipped": dm.skipped,
    }
    print(json.dumps(result))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
