"""Fixtures for the data tests: shard folders with known, freshly random contents."""

from __future__ import annotations

import torch
import pytest

from sla2_train.data.format import encode_sample
from sla2_train.data.index import build_index, write_index
from sla2_train.data.writer import ShardWriter


def random_sample(latent_shape, text_dim, max_len):
    """Fresh random tensors, never zeros; text length varies per sample."""
    length = int(torch.randint(1, max_len + 1, (1,)))
    latents = torch.randn(*latent_shape) * 2 + 0.5
    text = torch.randn(length, text_dim) + 1.0
    return latents, text


@pytest.fixture
def make_shards(tmp_path):
    """make_shards(name, n, per_shard, ...) → (folder, {key: (latents fp32, text fp32)}) as stored (after dtype)."""

    def make(name="ds", num=10, per_shard=3, latent_shape=(3, 2, 5, 7), text_dim=6, max_len=9, dtype="float32"):
        folder = tmp_path / name
        truth, lens = {}, []
        with ShardWriter(folder, per_shard) as writer:
            for i in range(num):
                latents, text = random_sample(latent_shape, text_dim, max_len)
                key = f"{name}-{i:05d}"
                writer.write(key, encode_sample(key, latents, text, {"caption": f"c{i}"}, dtype))
                # Truth is what the shard can hold: the tensors rounded to the storage dtype.
                cast = getattr(torch, dtype)
                truth[key] = (latents.to(cast).float(), text.to(cast).float())
                lens.append(text.shape[0])
        write_index(folder, build_index(writer.finished, latent_shape, text_dim, dtype, lens, {k: "h" + k for k in truth}))
        return folder, truth

    return make
