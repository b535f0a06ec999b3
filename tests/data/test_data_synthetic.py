"""Synthetic shards: real format, structured non-trivial content, deterministic, cached once."""

from __future__ import annotations

import json
import multiprocessing
import tarfile

import pytest
import torch

from sla2_train.data import LatentDataModule, read_index, synthetic_dataset, write_synthetic_shards
from sla2_train.data.format import META_MEMBER
from sla2_train.data.synthetic import WORDS


def _collect(folder, text_len):
    dm = LatentDataModule(str(folder), str(folder), batch_size=64, num_workers=0, text_len=text_len)
    return [b for b in dm.val_dataloader()]


def test_generator_writes_the_format_with_structured_data(tmp_path):
    seed = int(torch.randint(0, 10_000, (1,)))
    index = write_synthetic_shards(tmp_path / "s", 13, latent_shape=(4, 3, 6, 8), text_dim=12, max_text_len=10,
                                   samples_per_shard=4, seed=seed)
    assert index["num_samples"] == 13 and [s["num_samples"] for s in index["shards"]] == [4, 4, 4, 1]
    assert index["latent_shape"] == [4, 3, 6, 8] and index["text_dim"] == 12
    assert index["dtypes"] == {"latents": "bfloat16", "text_embeds": "bfloat16"}
    assert len(index["source_hashes"]) == 13 and read_index(tmp_path / "s") == index
    (batch,) = _collect(tmp_path / "s", text_len=10)
    lat, mask = batch["latents"], batch["text_mask"]
    assert lat.shape == (13, 4, 3, 6, 8)
    # Normalised like VAE latents, and not noise: neighbouring pixels are correlated by the waves.
    assert abs(lat.mean()) < 0.05 and abs(lat.std() - 1) < 0.05
    assert torch.corrcoef(torch.stack([lat[..., :-1].flatten(), lat[..., 1:].flatten()]))[0, 1] > 0.3
    lengths = mask.sum(1)
    assert lengths.min() >= 2 and lengths.max() <= 10 and len(set(lengths.tolist())) > 2
    # Captions are words of the vocabulary, one per token.
    with tarfile.open(tmp_path / "s" / "shard-000000.tar") as tar:
        meta = json.loads(tar.extractfile(f"syn{seed:04d}-000000.{META_MEMBER}").read())
    assert len(meta["caption"].split()) == int(lengths[0]) and set(meta["caption"].split()) <= set(WORDS)
    assert meta["latent_shape"] == [4, 3, 6, 8] and len(meta["source_hash"]) == 64


def test_generator_is_deterministic_and_refuses_to_overwrite(tmp_path):
    kw = dict(latent_shape=(2, 1, 3, 3), text_dim=4, max_text_len=5, samples_per_shard=3)
    write_synthetic_shards(tmp_path / "a", 5, seed=1, **kw)
    write_synthetic_shards(tmp_path / "b", 5, seed=1, **kw)
    write_synthetic_shards(tmp_path / "c", 5, seed=2, **kw)
    shard = "shard-000000.tar"
    assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    assert (tmp_path / "a" / shard).read_bytes() != (tmp_path / "c" / shard).read_bytes()
    with pytest.raises(FileExistsError, match="refusing to write"):
        write_synthetic_shards(tmp_path / "a", 5, seed=1, **kw)
    with pytest.raises(ValueError, match="latent_shape must be 4"):
        write_synthetic_shards(tmp_path / "d", 5, latent_shape=(2, 3, 3))


PARAMS = dict(num_samples=6, latent_shape=[2, 1, 3, 3], text_dim=4, max_text_len=5, samples_per_shard=2, seed=0)


def test_cache_is_reused_and_repaired(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA2_CACHE", str(tmp_path / "cache"))
    first = synthetic_dataset(**PARAMS)
    assert first.parent == tmp_path / "cache" / "synthetic"
    stamp = (first / "shard-000000.tar").stat().st_mtime_ns
    assert synthetic_dataset(**PARAMS) == first
    assert (first / "shard-000000.tar").stat().st_mtime_ns == stamp, "complete cache was regenerated"
    assert synthetic_dataset(**{**PARAMS, "seed": 1}) != first
    (first / "shard-000001.tar").unlink()  # an incomplete cache is regenerated, not used
    assert synthetic_dataset(**PARAMS) == first and (first / "shard-000001.tar").is_file()
    assert sorted(p.name for p in first.parent.iterdir() if p.name.startswith(".")) == []  # no temp leftovers


def _make(cache):
    return str(synthetic_dataset(cache, **PARAMS))


def test_concurrent_ranks_get_one_complete_cache(tmp_path):
    with multiprocessing.get_context("fork").Pool(3) as pool:
        paths = pool.map(_make, [tmp_path] * 3)
    assert len(set(paths)) == 1
    assert read_index(paths[0])["num_samples"] == 6
    assert len(list(tmp_path.iterdir())) == 1
