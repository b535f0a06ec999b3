"""Time the preparation's VAE encode per clip (the GPU part of sla2-prepare) at a real clip size.

    python scripts/bench_encode.py --model-path /models/Wan2.1-T2V-1.3B-Diffusers      # the real VAE
    python scripts/bench_encode.py --random                                             # Wan2.1 VAE architecture, random weights

Random weights time the same computation as the real ones (same architecture, same shapes). Prints one JSON line.
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

from sla2_train.data.prep import EncoderSpec, VaeEncoder
from sla2_train.data.prep.encoders import resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", help="local diffusers Wan folder (with vae/)")
    p.add_argument("--random", action="store_true", help="random Wan2.1 VAE instead of a model folder")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--clips", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--tiling", action="store_true")
    a = p.parse_args()
    if not a.random and not a.model_path:
        p.error("give --model-path or --random")

    tmp = None
    root = a.model_path
    if a.random:
        from diffusers import AutoencoderKLWan

        tmp = tempfile.TemporaryDirectory(prefix="sla2-vae-")
        AutoencoderKLWan().save_pretrained(os.path.join(tmp.name, "vae"))  # diffusers' defaults = Wan2.1's VAE
        root = tmp.name
    device = resolve_device("auto")
    enc = VaeEncoder(EncoderSpec(model_path=root, vae_dtype=a.dtype, vae_tiling=a.tiling), device)
    t = torch.arange(a.frames).view(-1, 1, 1, 1)
    y = torch.arange(a.height).view(1, -1, 1, 1)
    x = torch.arange(a.width).view(1, 1, -1, 1)
    clip = ((x + 3 * t) % 256 ^ (y + 2 * t) % 256).expand(-1, -1, -1, 3).to(torch.uint8).contiguous()  # moving pattern

    latents = enc(clip)  # warm-up (cuDNN autotuning, allocations)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.clips):
        latents = enc(clip)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_clip = (time.perf_counter() - t0) / a.clips
    print(json.dumps({
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "weights": "random Wan2.1 VAE" if a.random else a.model_path,
        "clip": [a.frames, a.height, a.width], "latents": list(latents.shape), "dtype": a.dtype, "tiling": a.tiling,
        "s_per_clip": round(per_clip, 3),
        "peak_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
