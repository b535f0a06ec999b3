"""Synthetic shards in the real format, so the whole pipeline runs without videos, VAE or text encoder.

The data is structured, not noise: captions are words from a small vocabulary, each word has a fixed
embedding row (plus small noise), and the latents are travelling waves whose spatial frequencies and
speed are chosen by the caption's first words, so a model can in principle learn text → video.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from .format import encode_sample
from .index import build_index, index_is_complete, read_index, write_index
from .writer import ShardWriter

GENERATOR_VERSION = 1  # bump when the generated data changes, so stale caches are not reused
WORDS = (
    "a red fox runs across snowy field under bright sun while birds fly over tall pine trees near "
    "quiet river and small boat drifts past old stone bridge at dusk as waves roll onto sandy beach"
).split()


def _sample(gen: torch.Generator, table: torch.Tensor, latent_shape: Sequence[int], min_len: int, max_len: int):
    c, f, h, w = latent_shape
    length = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
    tokens = torch.randint(0, len(WORDS), (length,), generator=gen)
    text = table[tokens] + 0.05 * torch.randn(length, table.shape[1], generator=gen)
    # Wave parameters come from the caption's first tokens: same words → same motion.
    t0, t1 = int(tokens[0]), int(tokens[min(1, length - 1)])
    # At most 1.5 cycles across the frame: smooth like real latents, even at the tiny test sizes.
    kh, kw, speed = 0.5 * (1 + t0 % 2), 0.5 * (1 + t1 % 3), 0.3 + 0.1 * (t0 % 5)
    ys = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(0, 1, w).view(1, 1, 1, w)
    ts = torch.arange(f, dtype=torch.float32).view(1, f, 1, 1)
    amp = 0.5 + torch.rand(c, 1, 1, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(c, 1, 1, 1, generator=gen)
    latents = amp * torch.sin(2 * math.pi * (kh * ys + kw * xs) + phase - speed * ts)
    latents = latents + 0.3 * torch.randn(c, f, h, w, generator=gen)
    latents = (latents - latents.mean()) / latents.std()  # like VAE latents after latents_mean/std normalisation
    caption = " ".join(WORDS[int(t)] for t in tokens)
    return latents, text, caption


def write_synthetic_shards(
    out_dir: str | os.PathLike,
    num_samples: int,
    latent_shape: Sequence[int] = (4, 3, 14, 18),
    text_dim: int = 32,
    max_text_len: int = 16,
    samples_per_shard: int = 8,
    seed: int = 0,
    dtype: str = "bfloat16",
    key_prefix: str = "syn",
) -> dict[str, Any]:
    """Write `num_samples` synthetic samples as shards + index.json into an empty (or new) `out_dir`."""
    latent_shape = tuple(int(x) for x in latent_shape)
    if len(latent_shape) != 4 or min(latent_shape) < 1:
        raise ValueError(f"latent_shape must be 4 positive ints [C, F, H, W], got {list(latent_shape)}")
    if num_samples < 1 or text_dim < 1 or max_text_len < 1:
        raise ValueError(f"num_samples, text_dim and max_text_len must be >= 1, got {num_samples}, {text_dim}, {max_text_len}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"refusing to write synthetic shards into non-empty folder {out}")
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(len(WORDS), text_dim, generator=gen)
    min_len = max(1, max_text_len // 4)
    lens, hashes = [], {}
    with ShardWriter(out, samples_per_shard) as writer:
        for i in range(num_samples):
            latents, text, caption = _sample(gen, table, latent_shape, min_len, max_text_len)
            key = f"{key_prefix}{seed:04d}-{i:06d}"
            source_hash = hashlib.sha256(f"synthetic/{seed}/{i}".encode()).hexdigest()
            meta = {"caption": caption, "source": f"synthetic:{seed}:{i}", "source_hash": source_hash}
            writer.write(key, encode_sample(key, latents, text, meta, dtype))
            lens.append(text.shape[0])
            hashes[key] = source_hash
    shards = writer.finished
    params = dict(num_samples=num_samples, latent_shape=list(latent_shape), text_dim=text_dim,
                  max_text_len=max_text_len, samples_per_shard=samples_per_shard, seed=seed, dtype=dtype)
    index = build_index(shards, latent_shape, text_dim, dtype, lens, hashes,
                        extra={"created_by": "sla2_train.data.synthetic", "params": params})
    write_index(out, index)
    return index


def cache_root() -> Path:
    return Path(os.environ.get("SLA2_CACHE", ".cache"))


def synthetic_dataset(cache_dir: str | os.PathLike | None = None, **params: Any) -> Path:
    """Folder of synthetic shards for `params`, generated once and reused while complete.

    Generated in a temporary sibling folder and renamed into place: concurrent ranks (torchrun) all
    generate, one rename wins, nobody reads a half-written dataset.
    """
    key = json.dumps({"v": GENERATOR_VERSION, **params}, sort_keys=True, default=list)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "synthetic"
    final = root / digest
    if index_is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
    try:
        write_synthetic_shards(tmp / "data", **params)
        if final.exists() and not index_is_complete(final):
            shutil.rmtree(final, ignore_errors=True)  # incomplete leftover of a crashed run
        try:
            os.rename(tmp / "data", final)
        except OSError:
            if not index_is_complete(final):  # a concurrent process renamed its copy first: fine if complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    read_index(final)
    return final


def synthetic_datamodule(
    latent_shape: Sequence[int],
    text_dim: int,
    text_len: int,
    num_train: int = 64,
    num_val: int = 16,
    samples_per_shard: int = 8,
    max_text_len: int | None = None,
    dtype: str = "bfloat16",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    **datamodule_kwargs: Any,
):
    """Hydra factory for `data=synthetic`: make (or reuse) train/val shards, return a LatentDataModule."""
    from .datamodule import LatentDataModule

    common = dict(latent_shape=[int(x) for x in latent_shape], text_dim=int(text_dim),
                  max_text_len=int(max_text_len or text_len), samples_per_shard=samples_per_shard, dtype=dtype)
    train = synthetic_dataset(cache_dir, num_samples=num_train, seed=seed, key_prefix="train", **common)
    val = synthetic_dataset(cache_dir, num_samples=num_val, seed=seed + 1, key_prefix="val", **common) if num_val else None
    return LatentDataModule(train_shards=str(train), val_shards=str(val) if val else None, text_len=int(text_len),
                            latent_shape=common["latent_shape"], text_dim=common["text_dim"], seed=seed, **datamodule_kwargs)
