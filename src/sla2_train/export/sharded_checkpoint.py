"""The training checkpoint of trainer=fsdp, read on one process.

Under FSDP, Lightning writes `last.ckpt` as a folder of torch.distributed.checkpoint shards:

    last.ckpt/.metadata              the index: every tensor's name, shape and dtype, and which file holds its pieces
    last.ckpt/__<rank>_0.distcp      each rank's pieces: the LightningModule's state dict under "model",
                                     the optimizer's state under "optimizer_0"
    last.ckpt/meta.pt                the rest of the checkpoint (step, loops, callbacks, checkpoint["sla2"])

The folder is read as it is, with no consolidation step: only the model's tensors, never the optimizer's state
(Adam's two moments are twice the weights), each tensor allocated once at full size, or read straight into
the tensors of the model being loaded. A 14B model then needs the memory of its weights on the reading
process, as loading it from `model.path` does, and nothing more.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from sla2_train.models import ConfigError

from .checkpoint_format import PREFIX, TrainedWeights, trained_weights

INDEX = ".metadata"
REST = "meta.pt"
MODEL = "model"  # the top-level key of the LightningModule's state dict among the shards


def is_sharded_checkpoint(path: Path) -> bool:
    """A folder with any part of the layout: the reader then says which part is missing."""
    return path.is_dir() and ((path / INDEX).exists() or (path / REST).exists() or any(path.glob("*.distcp")))


def _error(key: str, path: Path, what: str) -> ConfigError:
    return ConfigError(f"{key}: the sharded checkpoint {str(path)!r} {what}")


def _model_tensors(reader: FileSystemReader, path: Path, key: str) -> dict[str, TensorStorageMetadata]:
    try:
        metadata = reader.read_metadata()
    except Exception as err:
        raise _error(key, path, f"has no readable {INDEX} ({type(err).__name__}); was it fully written?") from err
    tensors = {}
    for flat, meta in metadata.state_dict_metadata.items():
        where = (metadata.planner_data or {}).get(flat)
        if isinstance(meta, TensorStorageMetadata) and where is not None and len(where) == 2 and where[0] == MODEL:
            tensors[where[1]] = meta
    if not tensors:
        raise _error(key, path, "holds no model weights; expected a trainer=fsdp checkpoint from train.py")
    return tensors


def read_sharded_checkpoint(
    path: str | Path, key: str = "init_from", ema: bool = True, into: dict[str, torch.Tensor] | None = None
) -> TrainedWeights:
    """The transformer weights of a sharded checkpoint folder. `into`: the transformer's own state dict; a
    tensor of the same name and shape is filled in place (cast to its dtype) instead of being allocated."""
    path = Path(path).expanduser()
    if not (path / REST).is_file():
        raise _error(key, path, f"lacks {REST}; was it fully written?")
    reader = FileSystemReader(str(path))
    into = into or {}
    state = {}
    for name, meta in _model_tensors(reader, path, key).items():
        own = into.get(name[len(PREFIX):]) if name.startswith(PREFIX) else None
        fits = own is not None and own.shape == meta.size
        state[name] = own if fits else torch.empty(meta.size, dtype=meta.properties.dtype)
    try:
        with warnings.catch_warnings():  # one process on purpose, as the call says
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp_load({MODEL: state}, storage_reader=reader, no_dist=True)
        rest = torch.load(path / REST, map_location="cpu", weights_only=True)
    except (Exception, CheckpointException) as err:  # a shard file missing or cut short
        # the reader wraps what failed (per rank) in a BaseException whose message is a traceback
        cause = next(iter(err.failures.values()))[0] if isinstance(err, CheckpointException) else err
        first = (str(cause).strip().splitlines() or [""])[0][:200]
        raise _error(key, path, f"could not be read ({type(cause).__name__}: {first})") from err
    return trained_weights(state, rest, path, key, ema)
