"""Streaming shards: round trip to the batch contract, rank/worker splits, exact epoch lengths."""

from __future__ import annotations

import os

import pytest
import torch

from sla2_train.data import LatentDataModule
from sla2_train.data.collate import collate
from sla2_train.data.errors import DataError
from sla2_train.data.streams import TrainStream


def _dm(train, val=None, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("text_len", 8)
    return LatentDataModule(train, val, **kw)


def _val_keys(dm):
    return [k for batch in dm.val_dataloader() for k in batch["keys"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_round_trip_write_stream_collate(make_shards, workers):
    folder, truth = make_shards(num=11, per_shard=4, max_len=11, dtype="bfloat16")
    text_len = 8  # shorter than some captions (up to 11): those are truncated, the rest zero-padded
    dm = _dm(folder, folder, batch_size=3, num_workers=workers, text_len=text_len)
    dm.setup("fit")
    seen = []
    for batch in dm.val_dataloader():
        assert set(batch) == {"latents", "text_embeds", "text_mask", "keys"}
        b = len(batch["keys"])
        assert 1 <= b <= 3
        # the shards' dtype travels; the training step casts on the device (lit/batch.py)
        assert batch["latents"].dtype == torch.bfloat16 and batch["latents"].shape == (b, 3, 2, 5, 7)
        assert batch["text_embeds"].dtype == torch.bfloat16 and batch["text_embeds"].shape == (b, text_len, 6)
        assert batch["text_mask"].dtype == torch.bool and batch["text_mask"].shape == (b, text_len)
        for i, key in enumerate(batch["keys"]):
            latents, text = truth[key]
            length = min(text.shape[0], text_len)
            assert torch.equal(batch["latents"][i].float(), latents)
            assert torch.equal(batch["text_embeds"][i, :length].float(), text[:length])
            assert batch["text_embeds"][i, length:].abs().sum() == 0
            assert batch["text_mask"][i].tolist() == [True] * length + [False] * (text_len - length)
            seen.append(key)
    assert sorted(seen) == sorted(truth)
    assert dm.skipped == {k: 0 for k in dm.skipped}
    assert dm.latent_shape == (3, 2, 5, 7) and dm.text_dim == 6  # read from index.json


@pytest.mark.parametrize("num, per_shard", [(23, 3), (9, 3)])  # 8 shards ≥ 4 consumers; 3 shards < 4 consumers
def test_validation_two_ranks_two_workers_each_sample_once(make_shards, monkeypatch, num, per_shard):
    folder, truth = make_shards(num=num, per_shard=per_shard)
    per_rank = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank.append(_val_keys(_dm(folder, folder, batch_size=2, num_workers=2)))
    everything = per_rank[0] + per_rank[1]
    assert len(everything) == len(set(everything)), "a sample was seen twice"
    assert set(everything) == set(truth), "a sample was never seen"
    assert all(per_rank), "a rank got no validation data"
    # Deterministic: the same rank sees the same samples in the same order again.
    assert _val_keys(_dm(folder, folder, batch_size=2, num_workers=2)) == per_rank[1]


@pytest.mark.parametrize("num, per_shard, world", [(2, 2, 2), (5, 8, 4), (8, 2, 4)])
def test_validation_gives_every_rank_data_once_there_are_world_size_samples(make_shards, monkeypatch, num, per_shard, world):
    # A rank without a single validation batch never joins the epoch-end sync of the logged val metrics: DDP hangs.
    folder, truth = make_shards(num=num, per_shard=per_shard)
    counts = []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        counts.append(len(_val_keys(_dm(folder, folder, batch_size=1, num_workers=2))))
    assert sum(counts) == num and min(counts) >= 1, counts
    assert max(counts) - min(counts) <= 1, f"ranks unevenly loaded: {counts}"


def test_fewer_validation_samples_than_ranks_fails_clearly(make_shards, monkeypatch):
    folder, _ = make_shards(num=3, per_shard=2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="validation shards hold 3 samples for 4 ranks"):
        _dm(folder, folder, batch_size=1, num_workers=0).val_dataloader()


def test_train_exact_epoch_length_per_rank_and_fresh_order(make_shards, monkeypatch):
    folder, truth = make_shards(num=10, per_shard=3)  # 4 uneven shards over 2 ranks × 2 workers
    epochs = {}
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = _dm(folder, batch_size=2, num_workers=2, epoch_length=5, seed=7).train_dataloader()
        assert len(loader) == 5
        epochs[rank] = []
        for _ in range(2):
            batches = list(loader)
            assert len(batches) == 5 and all(len(b["keys"]) == 2 for b in batches)
            assert all(k in truth for b in batches for k in b["keys"])
            epochs[rank].append([k for b in batches for k in b["keys"]])
    assert epochs[0][0] != epochs[0][1], "epoch 2 repeated epoch 1's order"
    assert epochs[0][0] != epochs[1][0], "both ranks drew the same stream"
    # Same seed, same rank → same stream; starting at epoch 1 (a resumed run) reproduces epoch 1.
    monkeypatch.setenv("RANK", "1")
    dm = _dm(folder, batch_size=2, num_workers=2, epoch_length=5, seed=7)
    assert [k for b in dm.train_dataloader() for k in b["keys"]] == epochs[1][0]
    dm._resolve()
    resumed = TrainStream(dm.train_files, epoch_length=5, seed=7, epoch_offset=1, **dm._stream_kwargs(2))
    assert [k for b in dm._loader(resumed) for k in b["keys"]] == epochs[1][1]


def _epoch_keys(folder, world, **kw):
    """{rank: keys of one training epoch} for `world` ranks of the same job."""
    keys = {}
    for rank in range(world):
        os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)
        keys[rank] = [k for b in _dm(folder, **kw).train_dataloader() for k in b["keys"]]
    return keys


@pytest.mark.parametrize("num, per_shard", [(24, 3), (9, 3)])  # 8 shards ≥ 4 consumers; 3 shards < 4 consumers
def test_train_epoch_splits_samples_over_ranks_without_repeats(make_shards, monkeypatch, num, per_shard):
    folder, truth = make_shards(num=num, per_shard=per_shard)
    monkeypatch.setenv("RANK", "0")  # restored after the test
    monkeypatch.setenv("WORLD_SIZE", "1")
    epoch_length = num // 4  # batches of 2 per rank: every share (6 samples; 3, 2, 2, 2) holds its worker's batches
    keys = _epoch_keys(folder, 2, batch_size=2, num_workers=2, epoch_length=epoch_length, seed=3)
    assert all(len(k) == 2 * epoch_length for k in keys.values())
    assert not set(keys[0]) & set(keys[1]), "two ranks read the same sample in one epoch"
    everything = keys[0] + keys[1]
    assert len(set(everything)) == len(everything) == 2 * 2 * epoch_length and set(everything) <= set(truth)


def test_train_epoch_longer_than_a_share_repeats_only_the_ranks_own_samples(make_shards, monkeypatch):
    folder, truth = make_shards(num=12, per_shard=3)  # 4 shards: one per rank and worker
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    keys = _epoch_keys(folder, 2, batch_size=2, num_workers=2, epoch_length=6, seed=3)  # 12 samples a rank
    assert all(len(k) == 12 for k in keys.values())
    assert not set(keys[0]) & set(keys[1]), "a rank whose share ran out read another rank's samples"
    assert set(keys[0]) | set(keys[1]) == set(truth)


def test_train_fewer_samples_than_ranks_and_workers_fails_clearly(make_shards, monkeypatch):
    folder, _ = make_shards(num=3, per_shard=2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DataError, match="data.train_shards hold 3 samples for 2 ranks × 2 workers"):
        _dm(folder, batch_size=1, num_workers=2).train_dataloader()


def test_train_epoch_shorter_than_worker_count(make_shards):
    folder, _ = make_shards(num=4, per_shard=2)
    loader = _dm(folder, batch_size=1, num_workers=2, epoch_length=1).train_dataloader()
    assert len(list(loader)) == 1


def test_clear_errors(make_shards, tmp_path):
    folder, _ = make_shards(num=3, per_shard=2)
    # Built is checked: every problem surfaces at construction, where the entry point prints one line.
    with pytest.raises(DataError, match="data.train_shards: no .tar shards in folder"):
        _dm(tmp_path)
    with pytest.raises(DataError, match="data.train_shards: no such shard folder"):
        _dm(tmp_path / "missing")
    with pytest.raises(DataError, match="data.val_shards: shard not found"):
        _dm(folder, str(tmp_path / "nope" / "s-{0..1}.tar"))
    with pytest.raises(DataError, match=r"latents \[3, 2, 5, 7\] with text_dim 6 .* model is built for latents "
                       r"\[3, 2, 5, 7\] with text_dim 5"):
        _dm(folder, text_dim=5)
    with pytest.raises(DataError, match=r"built for latents \[3, 2, 5, 8\] .*model.latent_shape"):
        _dm(folder, latent_shape=[3, 2, 5, 8])
    with pytest.raises(DataError, match="data.batch_size must be"):
        _dm(folder, batch_size=0)


def test_collate_keeps_one_dtype_and_promotes_mixed_ones():
    def sample(key, dtype, length):
        return {"key": key, "latents": torch.randn(2, 1, 3, 3).to(dtype),
                "text_embeds": torch.randn(length, 4).to(dtype)}

    same = collate([sample("a", torch.bfloat16, 2), sample("b", torch.bfloat16, 5)], text_len=4)
    assert same["latents"].dtype == same["text_embeds"].dtype == torch.bfloat16
    mixed = [sample("a", torch.bfloat16, 2), sample("b", torch.float32, 3)]
    batch = collate(mixed, text_len=4)
    assert batch["latents"].dtype == batch["text_embeds"].dtype == torch.float32
    for i, s in enumerate(mixed):
        assert torch.equal(batch["latents"][i], s["latents"].float())
        n = s["text_embeds"].shape[0]
        assert torch.equal(batch["text_embeds"][i, :n], s["text_embeds"].float())
