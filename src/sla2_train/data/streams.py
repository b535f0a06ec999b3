"""Iterable datasets over shards: a fixed-length training stream split over ranks and workers, a validation split.

Both batch inside the DataLoader workers (DataLoader(batch_size=None)) so a worker hands over whole batches.
"""

from __future__ import annotations

import random
from itertools import islice
from typing import Any, Iterable, Iterator

from torch.utils.data import IterableDataset
from .collate import collate
from .distributed import worker_and_count
from .errors import DataError
from .format import SkipSample, decode_sample
from .reading import read_samples
from .skips import SkipCounter, make_handler


class _ShardStream(IterableDataset):
    def __init__(
        self,
        shards: list[str],
        batch_size: int,
        text_len: int,
        counter: SkipCounter,
        rank: int = 0,
        world_size: int = 1,
        latent_shape: tuple[int, ...] | None = None,
        text_dim: int | None = None,
        check_finite: bool = True,
    ):
        super().__init__()
        if not shards:
            raise ValueError("no shards given")
        self.shards = list(shards)
        self.batch_size = batch_size
        self.text_len = text_len
        self.counter = counter
        self.rank, self.world_size = rank, world_size
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else None
        self.text_dim = text_dim
        self.check_finite = check_finite
        self._since_good = 0  # shards opened since the last good sample (guards against all-corrupt data)

    def _raw(self, urls: Iterable[str], quiet: bool = False) -> Iterator[dict[str, Any]]:
        return read_samples(urls, self.counter, quiet)

    def _decode(self, raws: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        handler = make_handler(self.counter)
        for raw in raws:
            try:
                sample = decode_sample(raw, self.latent_shape, self.text_dim, self.check_finite)
            except SkipSample as exn:
                handler(exn.with_url(raw.get("__url__")))
                continue
            # Shapes unknown (no index.json, none configured): the first good sample fixes them, so a later odd
            # one is skipped as bad_shape instead of crashing the worker in collate's torch.stack.
            self.latent_shape = self.latent_shape or tuple(sample["latents"].shape)
            self.text_dim = self.text_dim or int(sample["text_embeds"].shape[1])
            self._since_good = 0
            yield sample

    def _batched(self, samples: Iterable[dict[str, Any]], partial: bool) -> Iterator[dict[str, Any]]:
        buf: list[dict[str, Any]] = []
        for sample in samples:
            buf.append(sample)
            if len(buf) == self.batch_size:
                yield collate(buf, self.text_len)
                buf = []
        if buf and partial:
            yield collate(buf, self.text_len)


def _shuffled(items: Iterable[Any], rng: random.Random, size: int) -> Iterator[Any]:
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


class TrainStream(_ShardStream):
    """Each epoch, the shards split without replacement over every rank and worker, cut to exactly
    `epoch_length` batches per rank.

    Every epoch draws one shard order from (seed, epoch), the same on every rank. With at least as many shards
    as consumers (ranks × workers), consumer g reads shards g, g+G, ... of that order; otherwise every consumer
    reads all shards and keeps samples g, g+G, ... So no two ranks get the same sample within an epoch, and
    together they read each sample once as long as every consumer's share holds its batches. A share that runs
    out is read again from its start (its own samples repeat; nobody else's): no rank runs dry, and the fixed
    length (what webdataset's `with_epoch` does, here split exactly across workers) gives every rank the same
    number of steps, so DDP never hangs at an epoch end.
    """

    def __init__(self, *args, epoch_length: int, seed: int = 0, shuffle_buffer: int = 16, epoch_offset: int = 0, **kw):
        super().__init__(*args, **kw)
        self.epoch_length = epoch_length
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.epoch_offset = epoch_offset
        self._iterations = 0  # advances per epoch in the (persistent) worker copy

    def __len__(self) -> int:
        return self.epoch_length

    def _opened(self, urls: list[str]) -> Iterator[str]:
        """The shards as they are opened, stopping the run once too many in a row gave nothing usable."""
        limit = 3 * len(self.shards) + 10
        for url in urls:
            if self._since_good > limit:
                skipped = ", ".join(f"{r} {n}" for r, n in self.counter.counts().items() if n)
                raise DataError(f"data.train_shards: no usable sample in the last {limit} shards opened (skipped so "
                                f"far: {skipped or 'none'}); are all train shards damaged? (first: {self.shards[0]})")
            self._since_good += 1
            yield url

    def _share(self, order: list[str], consumer: int, consumers: int, rng: random.Random) -> Iterator[dict[str, Any]]:
        """This consumer's decoded samples of the epoch, shuffled, pass after pass over the same samples (the
        shuffle buffer drains at the end of each pass, so a pass never reaches into the next one)."""
        whole_shards = len(order) >= consumers
        while True:
            if whole_shards:
                raws = self._raw(self._opened(order[consumer::consumers]))
            else:
                # Shard damage is seen by every consumer here: consumer 0 alone counts it.
                raws = islice(self._raw(self._opened(order), quiet=consumer != 0), consumer, None, consumers)
            yield from _shuffled(self._decode(raws), rng, self.shuffle_buffer)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = worker_and_count()
        epoch = self.epoch_offset + self._iterations
        self._iterations += 1
        num_batches = self.epoch_length // num_workers + (worker < self.epoch_length % num_workers)
        if num_batches == 0:
            return
        # String seeds hash deterministically (unlike hash()), so runs are reproducible across processes.
        order = list(self.shards)
        random.Random(f"sla2-train/{self.seed}/{epoch}").shuffle(order)
        consumer = self.rank * num_workers + worker
        rng = random.Random(f"sla2-train/{self.seed}/{consumer}/{epoch}")
        samples = self._share(order, consumer, self.world_size * num_workers, rng)
        yield from islice(self._batched(samples, partial=False), num_batches)


class ValStream(_ShardStream):
    """Every sample exactly once across ranks × workers, in a fixed order.

    With at least as many shards as consumers, consumer g reads shards g, g+G, ...; otherwise every consumer
    reads all shards and keeps samples g, g+G, ... (validation sets are small, the extra reading is cheap).
    Consumers are numbered worker-major (g = worker * world_size + rank), so shards and samples go round-robin
    over the ranks first: every rank gets data as soon as there are world_size samples. A rank with no
    validation batch would never reach the epoch-end sync of the logged metrics, and DDP would hang there.
    """

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = worker_and_count()
        consumers = self.world_size * num_workers
        consumer = worker * self.world_size + self.rank
        if len(self.shards) >= consumers:
            raws = self._raw(self.shards[consumer::consumers])
        else:
            # Shard damage is seen by every consumer here: consumer 0 alone counts it, so once per pass.
            raws = islice(self._raw(self.shards, quiet=consumer != 0), consumer, None, consumers)
        yield from self._batched(self._decode(raws), partial=True)
