"""Who am I in the data-parallel job: (rank, world_size) and (worker, num_workers)."""

from __future__ import annotations

import os

import torch


def rank_and_world() -> tuple[int, int]:
    """torch.distributed if initialised, else RANK/WORLD_SIZE (set by torchrun before init), else (0, 1).

    Call it in the main process when the DataLoader is built: forked DataLoader workers must not
    query the process group themselves.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"inconsistent RANK={rank} / WORLD_SIZE={world} in the environment")
    return rank, world


def worker_and_count() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
