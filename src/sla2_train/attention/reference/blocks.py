"""Block geometry shared by every SLA2 function: pooling with ragged tails and mask expansion.

All tensors are [B, H, N, D]. N need not be a multiple of the block size: the last block is ragged,
its mean divides by the true token count, and expanded masks are cropped to N.
"""

from __future__ import annotations

from typing import Iterator

import torch


def num_blocks(n: int, block: int) -> int:
    return -(-n // block)


def query_chunks(n: int, block_q: int, rows: int) -> Iterator[tuple[slice, slice]]:
    """(token rows, query blocks) of whole query blocks, about `rows` rows each (at least one block); the ragged
    block comes last. What every O(rows · N) walk over a layer's full attention steps by."""
    step = max(block_q, rows // block_q * block_q)
    for start in range(0, n, step):
        stop = min(n, start + step)
        yield slice(start, stop), slice(start // block_q, num_blocks(stop, block_q))


def block_token_counts(n: int, block: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[nb] number of real tokens in each block (the last one may be short)."""
    counts = torch.full((num_blocks(n, block),), float(block), device=device, dtype=dtype)
    counts[-1] = n - (counts.numel() - 1) * block
    return counts


def mean_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """[B, H, N, D] -> [B, H, ceil(N/block), D], ragged tail averaged over its true length."""
    b, h, n, d = x.shape
    nb = num_blocks(n, block)
    padded = torch.nn.functional.pad(x, (0, 0, 0, nb * block - n))
    sums = padded.view(b, h, nb, block, d).sum(dim=3)
    return sums / block_token_counts(n, block, x.device, x.dtype)[:, None]


def smooth_k(k: torch.Tensor) -> torch.Tensor:
    """Subtract the per-head token mean of K.

    Adds the same constant q·mean to every score of a query row, so softmax is unchanged; it only
    centres K for pooling (the router) and for INT8 quantisation.
    """
    return k - k.mean(dim=-2, keepdim=True)


def expand_block_mask(mask: torch.Tensor, n_q: int, n_k: int, block_q: int, block_k: int) -> torch.Tensor:
    """[..., nq, nk] block values -> [..., n_q, n_k] token values (cropped to the ragged length)."""
    tok = mask.repeat_interleave(block_q, dim=-2)[..., :n_q, :]
    return tok.repeat_interleave(block_k, dim=-1)[..., :n_k]


def expand_query_blocks(x: torch.Tensor, n_q: int, block_q: int) -> torch.Tensor:
    """[..., nq] per-query-block values -> [..., n_q, 1] per-token values, for broadcasting over D."""
    return x.repeat_interleave(block_q, dim=-1)[..., :n_q, None]


def pooled_block_mass(probs: torch.Tensor, block_q: int, block_k: int) -> torch.Tensor:
    """Softmax rows P [B, H, R, N] (R whole query blocks, a ragged one last) -> [B, H, R/bq, nk]: each key
    block's share of the row, averaged over the rows of each query block."""
    b, h, r, n = probs.shape
    nk = num_blocks(n, block_k)
    per_key = torch.nn.functional.pad(probs, (0, nk * block_k - n)).view(b, h, r, nk, block_k).sum(-1)
    return mean_pool(per_key, block_q)
