"""Videos + captions → Wan VAE latents + UMT5 embeddings → shards. Resumable, one process per GPU, bad data counted."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..distributed import rank_and_world
from ..format import encode_sample
from ..writer import ShardWriter
from .encoders import EncoderSpec, TextEncoder, VaeEncoder, component_dir, resolve_device
from .sources import VIDEO_EXTENSIONS, VideoItem, discover, owner
from .store import OutputStore
from .video import ClipSpec, VideoError, load_clip

log = logging.getLogger("sla2_train.data.prepare")


@dataclass(frozen=True)
class OutputSpec:
    samples_per_shard: int = 16      # ≈ 110 MB per shard at Wan-1.3B 480p in bf16
    dtype: str = "bfloat16"
    overwrite: bool = False          # replace a dataset made with other settings (or start this one over)
    retry_failed: bool = False       # re-run: try again videos that were skipped before


@dataclass
class Report:
    rank: int
    world_size: int
    written: int = 0
    already_done: int = 0
    previously_failed: int = 0
    skipped: Counter = field(default_factory=Counter)
    index: dict[str, Any] | None = None
    limited: bool = False            # `limit` left some of this process's videos out

    def summary(self) -> str:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        line = (f"rank {self.rank}/{self.world_size}: wrote {self.written}, already done {self.already_done}, "
                f"skipped {sum(self.skipped.values())} ({skipped}), earlier failures not retried {self.previously_failed}")
        if self.index is not None:
            why = "limit reached: the rest of the videos are not prepared" if self.limited else "other ranks still running"
            state = "complete" if self.index.get("complete") else f"partial ({why})"
            line += (f"\ndataset {state}: {self.index['num_samples']} samples in {len(self.index['shards'])} shards, "
                     f"latents {self.index['latent_shape']}, text_dim {self.index['text_dim']}, "
                     f"skipped in total {self.index['skipped'] or 'none'}")
        return line


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    return record  # keep records as they are (a module-level function pickles to spawned workers)


class _Clips(Dataset):
    """Decoding runs in DataLoader workers, so the GPU encodes one clip while the CPUs decode the next.

    While a process reads a video it keeps the video's key in a marker file (`marker_prefix` + pid): a file
    that kills the decoder outright (a segfault in libav) leaves its marker behind, and the next run skips
    it instead of dying on it again.
    """

    def __init__(self, items: list[VideoItem], spec: ClipSpec, marker_prefix: str):
        self.items, self.spec, self.marker_prefix = items, spec, marker_prefix

    def __len__(self) -> int:
        return len(self.items)

    def decode(self, item: VideoItem) -> torch.Tensor:
        """The clip of one video (while its marker file exists)."""
        return load_clip(item.path, self.spec)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        marker = f"{self.marker_prefix}{os.getpid()}"
        with open(marker, "w") as f:
            f.write(f"{item.key}\t{item.relpath}")
        try:
            return {"item": item, "clip": self.decode(item), "source_hash": _sha256(item.path)}
        except VideoError as exn:
            return {"item": item, "error": (exn.reason, str(exn))}
        except Exception as exn:
            # Anything else one file provokes (odd stream metadata, the file gone before it is hashed, ...): raised,
            # it would stop the run, and every resume would stop at the same file again, never recording it.
            return {"item": item, "error": ("unreadable_video", f"{type(exn).__name__}: {exn}")}
        finally:
            os.unlink(marker)


class Preparer:
    """Built by Hydra from conf/prepare.yaml; `run()` prepares this process's share of the videos."""

    def __init__(self, videos: str, out_dir: str, clip: ClipSpec = ClipSpec(), encoders: EncoderSpec = EncoderSpec(),
                 output: OutputSpec = OutputSpec(), captions: str | None = None, decode_workers: int = 4,
                 limit: int | None = None, progress: bool = True):
        if decode_workers < 0 or (limit is not None and limit < 1):
            raise ValueError(f"decode_workers must be >= 0 and limit >= 1 or null, got {decode_workers}, {limit}")
        self.videos, self.captions, self.out_dir = videos, captions, out_dir
        self.output, self.clip, self.encoders = output, clip, encoders
        self.decode_workers, self.limit, self.progress = decode_workers, limit, progress

    def settings(self) -> dict[str, Any]:
        """What makes two runs' samples compatible; a re-run with other settings must not mix into the dataset.

        Models are identified by their config/tokenizer files, not their path: moving the model folder is fine,
        swapping the model is not.
        """
        enc = asdict(self.encoders)
        for k in ("device", "vae_tiling", "model_path", "vae_path", "text_encoder_path", "tokenizer_path"):
            enc.pop(k)  # how or where, not what
        models = {}
        for explicit, name in ((self.encoders.vae_path, "vae"), (self.encoders.text_encoder_path, "text_encoder"),
                               (self.encoders.tokenizer_path, "tokenizer")):
            folder = component_dir(explicit, self.encoders.model_path, name)
            # Small files (configs, tokenizer) by content; weights by name and size (hashing GBs would take minutes).
            h = hashlib.sha256()
            for p in sorted(q for q in folder.iterdir() if q.is_file()):
                small = p.suffix in (".json", ".model", ".txt")
                h.update(p.name.encode() + (p.read_bytes() if small else str(p.stat().st_size).encode()))
            models[name] = h.hexdigest()[:16]
        return {"clip": asdict(self.clip), "encoders": enc, "models": models, "dtype": self.output.dtype}

    def _skip(self, store: OutputStore, report: Report, item: VideoItem, reason: str, detail: str) -> None:
        report.skipped[reason] += 1
        store.record_failure(item.key, item.relpath, reason, detail)
        log.warning("skipped (%s) %s: %s", reason, item.relpath, detail.splitlines()[0][:300] if detail else "")

    def run(self) -> Report:
        rank, world = rank_and_world()
        report = Report(rank, world)
        # Check inputs before touching out_dir, so a typo leaves no half-made dataset folder behind.
        found = discover(self.videos, self.captions)
        if not found:
            raise FileNotFoundError(f"videos: no video files ({', '.join(VIDEO_EXTENSIONS)}) in {self.videos}")
        items = [it for it in found if owner(it.key, world) == rank]
        settings = self.settings()  # also checks that the model folders exist
        store = OutputStore(self.out_dir, rank, world, settings, self.output.overwrite)
        # A run cut short by `limit` has not prepared its share: it must not mark the dataset complete.
        report.limited = self.limit is not None and len(items) > self.limit
        if self.limit is not None:
            items = items[: self.limit]
        for key, source in store.take_crash_markers():  # counted below with the earlier failures
            store.record_failure(key, source, "crashed_decoder", "the decoding process died while reading this file")
            log.warning("skipped (crashed_decoder) %s: its decoder died in an earlier run", source)
        done, failed = store.done_keys(), store.failures()
        todo = []
        for it in items:
            if it.key in done:
                report.already_done += 1
            elif it.key in failed and not self.output.retry_failed:
                report.previously_failed += 1
            elif it.caption is None:
                self._skip(store, report, it, "missing_caption", "no caption (sidecar .txt or manifest entry) or an empty one")
            else:
                todo.append(it)
        if todo:
            self._encode_all(todo, store, report)
        report.index = store.finish(share_done=not report.limited)
        log.info("%s", report.summary())
        return report

    def _encode_all(self, todo: list[VideoItem], store: OutputStore, report: Report) -> None:
        device = resolve_device(self.encoders.device)
        vae, text = VaeEncoder(self.encoders, device), TextEncoder(self.encoders, device)
        pending: dict[str, dict[str, Any]] = {}

        def on_flush(info):
            store.record_shard(info, [pending.pop(k) for k in info.keys])

        clips = _Clips(todo, self.clip, store.decoding_marker_prefix())
        # Decode workers are spawned, not forked: this process has libav's and torch's threads running (and the
        # encoders, on a GPU), and a fork copies their held locks into a child that can then wait on them forever
        # (seen: a worker stuck in libswscale's frame conversion after its parent had decoded videos itself).
        loader = DataLoader(clips, batch_size=None, num_workers=self.decode_workers,
                            collate_fn=_identity, prefetch_factor=2 if self.decode_workers else None,
                            multiprocessing_context="spawn" if self.decode_workers else None)
        writer = ShardWriter(store.root, self.output.samples_per_shard, prefix=store.prefix,
                             start_index=store.next_shard_index(), on_flush=on_flush)
        with writer:
            for rec in tqdm(loader, total=len(todo), desc=f"prepare r{store.rank}", disable=not self.progress,
                            position=store.rank if store.world > 1 else None, dynamic_ncols=True):
                item = rec["item"]
                if "error" in rec:
                    self._skip(store, report, item, *rec["error"])
                    continue
                latents = vae(rec["clip"])
                (embeds,) = text([item.caption])
                meta = {"caption": item.caption, "source": item.relpath, "source_hash": rec["source_hash"]}
                members = encode_sample(item.key, latents, embeds, meta, self.output.dtype)
                pending[item.key] = {"key": item.key, "source": item.relpath, "source_hash": rec["source_hash"],
                                     "latent_shape": list(latents.shape), "text_dim": int(embeds.shape[1]),
                                     "text_len": int(embeds.shape[0])}
                writer.write(item.key, members)
                report.written += 1
