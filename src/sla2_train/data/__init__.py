"""Latent/text shards: format, synthetic generator, streaming LightningDataModule (see data/README.md)."""

from .collate import collate
from .datamodule import LatentDataModule
from .format import SkipSample, decode_sample, encode_sample
from .index import read_index, write_index
from .shards import resolve_shards
from .synthetic import synthetic_datamodule, synthetic_dataset, write_synthetic_shards
from .writer import ShardWriter

__all__ = [
    "LatentDataModule",
    "ShardWriter",
    "SkipSample",
    "collate",
    "decode_sample",
    "encode_sample",
    "read_index",
    "resolve_shards",
    "synthetic_datamodule",
    "synthetic_dataset",
    "write_index",
    "write_synthetic_shards",
]
