"""Find the videos and their captions: sidecar .txt next to each video, or a .jsonl / .csv manifest."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg", ".gif", ".npy")
_PATH_FIELDS = ("video", "path", "file", "filename", "file_name")
_CAPTION_FIELDS = ("caption", "text", "prompt")


@dataclass(frozen=True)
class VideoItem:
    key: str             # shard key: readable slug + hash of the relative path (unique, stable across runs)
    path: str
    relpath: str
    caption: str | None  # None: no caption found (skipped and counted as missing_caption)


def make_key(relpath: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(relpath)[0]).strip("_")[-60:]
    return f"{slug}-{hashlib.sha1(relpath.encode()).hexdigest()[:10]}"


def owner(key: str, world_size: int) -> int:
    """Which process prepares `key`: stable, whatever else is in the folder or already done."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % world_size


def _read_manifest(path: Path, root: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"caption manifest not found: {path}")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exn:
                    raise ValueError(f"{path}:{n}: not valid JSON ({exn.msg})") from None
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ValueError(f"caption manifest must be .jsonl or .csv, got {path}")
    out = {}
    for n, row in enumerate(rows, 1):
        video = next((row[k] for k in _PATH_FIELDS if row.get(k)), None)
        caption = next((row[k] for k in _CAPTION_FIELDS if k in row), None)
        if video is None:
            raise ValueError(f"{path}: entry {n} names no video (one of {', '.join(_PATH_FIELDS)})")
        video = os.path.normpath(os.path.expanduser(video))
        if os.path.isabs(video) and Path(video).is_relative_to(root):
            # The same file as the folder scan finds: one item, not a captioned one plus a "missing caption".
            video = os.path.normpath(str(Path(video).relative_to(root)))
        out[video] = caption
    return out


def _sidecar_caption(video: Path) -> str | None:
    txt = video.with_suffix(".txt")
    return txt.read_text(encoding="utf-8", errors="replace") if txt.is_file() else None


def discover(videos: str | os.PathLike, captions: str | os.PathLike | None = None) -> list[VideoItem]:
    """All videos under `videos` (recursive) plus manifest entries, sorted by key. Empty captions count as missing."""
    root = Path(videos).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    found = {
        os.path.normpath(str(p.relative_to(root))): p
        for p in root.rglob("*")
        if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
    }
    manifest = _read_manifest(Path(captions).expanduser(), root.absolute()) if captions else None
    # A manifest entry whose file is absent is still an item: it is reported (unreadable_video), not lost.
    rels = sorted(set(found) | set(manifest or {}))
    items = []
    for rel in rels:
        path = found.get(rel, root / rel)
        caption = manifest.get(rel) if manifest is not None else _sidecar_caption(path)
        caption = caption.strip() if isinstance(caption, str) and caption.strip() else None
        items.append(VideoItem(make_key(rel), str(path), rel, caption))
    return sorted(items, key=lambda it: it.key)
