"""Shard files → raw samples (member bytes grouped by key), one count and one warning per damaged shard.

Built from webdataset's tar iterator and key grouping, with a per-shard handler: the first error in a shard
ends that shard (a truncated stream would otherwise report the same damage twice, once per tar layer)
and the next shard is read.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_iterator

from .format import LATENTS_MEMBER, TEXT_MEMBER, CorruptShard
from .skips import SkipCounter, make_handler

# Only the tensor members are read; meta.json and anything unknown (e.g. a planted .pt) are never even read.
WANTED = ("." + LATENTS_MEMBER, "." + TEXT_MEMBER)


def _wanted(fname: str) -> bool:
    return fname.endswith(WANTED)


def _members(urls: Iterable[str], report) -> Iterator[dict[str, Any]]:
    for url in urls:
        errors: list[BaseException] = []
        last_key, last_suffixes = None, set()

        def stop_shard(exn: BaseException) -> bool:
            errors.append(exn)
            return False

        try:
            stream = gopen(url, "rb")
            try:
                for member in tar_file_iterator(stream, handler=stop_shard, select_files=_wanted):
                    key, suffix = member["fname"].split(".", 1)
                    if key != last_key:
                        last_key, last_suffixes = key, set()
                    last_suffixes.add("." + suffix)
                    member["__url__"] = url
                    yield member
            finally:
                stream.close()
        except Exception as exn:  # opening or tar-header errors: the shard, or its rest, is unreadable
            errors.append(exn)
        if errors:
            first = errors[0]
            detail = f"{type(first).__name__}: {first.args[0] if first.args else ''}".split(" @ ")[0]
            report(CorruptShard(f"shard unreadable from here on ({detail})", None).with_url(url))
            if last_key is not None and not set(WANTED) <= last_suffixes:
                # The sample cut by the damage: mark it bad so grouping drops it (webdataset's "__bad__" flag).
                yield {"fname": f"{last_key}.__bad__", "data": b"1", "__url__": url}
        yield {}  # end-of-shard marker: samples never straddle shards


def raw_samples(urls: Iterable[str], report) -> Iterator[dict[str, Any]]:
    """Raw samples {"__key__", "__url__", "<member>": bytes} from the shards, in order; damage goes to `report`."""
    return group_by_keys(_members(urls, report), handler=report)


def read_samples(urls: Iterable[str], counter: SkipCounter, quiet: bool = False) -> Iterator[dict[str, Any]]:
    """raw_samples with damage counted and warned about (once per shard and sample, see skips.make_handler).

    quiet: damage is skipped without counting or warning (a reader whose shards another reader also reads).
    """
    return raw_samples(urls, make_handler(counter, quiet))
