"""Turn a user's shard spec (folder, brace pattern, glob, list) into a checked list of local tar paths."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Iterable

import braceexpand

from .format import INDEX_NAME
from .index import read_index

ShardSpec = str | os.PathLike | Iterable[str | os.PathLike] | None


def _expand_one(item: str) -> list[str]:
    path = Path(item).expanduser()
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            # The index is the source of truth: a stray .tar from an aborted run is not part of the dataset.
            names = [s["name"] for s in read_index(path)["shards"]]
            found = [str(path / n) for n in names]
        else:
            found = sorted(str(p) for p in path.glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"no .tar shards in folder {path}")
        return found
    if "{" in item:
        return [str(Path(p).expanduser()) for p in braceexpand.braceexpand(item)]
    if any(ch in item for ch in "*?["):
        found = sorted(glob.glob(str(path)))
        if not found:
            raise FileNotFoundError(f"no shard matches pattern {item}")
        return found
    return [str(path)]


def resolve_shards(spec: ShardSpec) -> list[str]:
    """Folder (uses index.json), 'a-{000..009}.tar', '*.tar' glob, a path, or a list of these → tar paths."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    shards: list[str] = []
    for item in items:
        shards.extend(_expand_one(os.fspath(item)))
    if not shards:
        raise FileNotFoundError(f"shard spec {spec!r} names no shards")
    missing = [s for s in shards if not os.path.isfile(s)]
    if missing:
        raise FileNotFoundError(f"shard not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return shards


def indexes_for(shards: list[str]) -> list[dict[str, Any]]:
    """The index.json of every folder the shards live in (folders without one are skipped)."""
    return [ix for _, ix in _folder_indexes(shards)]


def _folder_indexes(shards: list[str]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for folder in sorted({os.path.dirname(os.path.abspath(s)) for s in shards}):
        if os.path.isfile(os.path.join(folder, INDEX_NAME)):
            out.append((folder, read_index(folder)))
    return out


def incomplete_folders(shards: list[str]) -> list[str]:
    """Folders whose index.json says preparation has not finished (sla2-prepare: "complete": false)."""
    return [folder for folder, ix in _folder_indexes(shards) if ix.get("complete") is False]


def size_mismatches(shards: list[str]) -> list[str]:
    """Shards whose file size differs from their index entry (truncated or rewritten since indexing)."""
    wanted = set(os.path.abspath(s) for s in shards)
    bad = []
    for folder in sorted({os.path.dirname(s) for s in wanted}):
        if not os.path.isfile(os.path.join(folder, INDEX_NAME)):
            continue
        for entry in read_index(folder)["shards"]:
            path = os.path.join(folder, entry["name"])
            if path in wanted and os.path.isfile(path) and os.path.getsize(path) != entry["bytes"]:
                bad.append(f"{path} ({os.path.getsize(path)} bytes, index says {entry['bytes']})")
    return bad


def shapes_from_indexes(shards: list[str]) -> tuple[tuple[int, ...] | None, int | None]:
    """(latent_shape, text_dim) recorded in the shards' index files; raises if folders disagree."""
    shapes = {(tuple(ix["latent_shape"]), int(ix["text_dim"])) for ix in indexes_for(shards)}
    if len(shapes) > 1:
        raise ValueError(f"shard folders disagree on shapes (latent_shape, text_dim): {sorted(shapes)}")
    return next(iter(shapes)) if shapes else (None, None)


def indexed_sample_count(shards: list[str]) -> int | None:
    """Samples the shards hold according to their index files; None when some shard has no index entry."""
    counts = {}
    for folder, ix in _folder_indexes(shards):
        for entry in ix["shards"]:
            counts[os.path.join(folder, entry["name"])] = int(entry["num_samples"])
    paths = [os.path.abspath(s) for s in shards]
    return sum(counts[p] for p in paths) if all(p in counts for p in paths) else None
