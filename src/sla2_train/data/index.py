"""index.json next to the shards: what a dataset holds, so readers know shapes without opening a tar."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .format import FORMAT_VERSION, INDEX_NAME
from .writer import ShardInfo


def build_index(
    shards: Iterable[ShardInfo],
    latent_shape: Iterable[int],
    text_dim: int,
    dtype: str,
    text_lens: Iterable[int],
    source_hashes: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    shards = sorted(shards, key=lambda s: s.name)
    lens = list(text_lens)
    return {
        "format_version": FORMAT_VERSION,
        "num_samples": sum(s.num_samples for s in shards),
        "latent_shape": [int(x) for x in latent_shape],
        "text_dim": int(text_dim),
        "text_len": {"min": min(lens), "max": max(lens)} if lens else None,
        "dtypes": {"latents": dtype, "text_embeds": dtype},
        "shards": [{"name": s.name, "num_samples": s.num_samples, "bytes": s.bytes} for s in shards],
        "source_hashes": dict(sorted(source_hashes.items())),
        **(extra or {}),
    }


def write_index(out_dir: str | os.PathLike, index: dict[str, Any]) -> Path:
    """Written last and atomically (sla2-prepare rewrites it per finishing process, see "complete")."""
    path = Path(out_dir) / INDEX_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, path)
    return path


def read_index(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {INDEX_NAME} in shard folder {folder}")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as exn:
        raise ValueError(f"corrupt {path}: {exn}") from None
    for field in ("num_samples", "latent_shape", "text_dim", "shards"):
        if field not in index:
            raise ValueError(f"{path} lacks field {field!r}")
    if index.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {index['format_version']}, newer than this code ({FORMAT_VERSION})")
    return index


def index_is_complete(folder: str | os.PathLike) -> bool:
    """True if index.json exists and every shard it lists is present with the recorded size."""
    try:
        index = read_index(folder)
    except (FileNotFoundError, ValueError):
        return False
    for shard in index["shards"]:
        path = Path(folder) / shard["name"]
        if not path.is_file() or path.stat().st_size != shard["bytes"]:
            return False
    return True
