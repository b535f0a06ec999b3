"""Bad data is skipped, counted once per event, reported in one line, and never unpickled."""

from __future__ import annotations

import io
import logging
import pickle
import tarfile

import pytest
import torch
from safetensors.torch import save as st_save

from sla2_train.data import LatentDataModule
from sla2_train.data.errors import DataError
from sla2_train.data.format import LATENTS_MEMBER, TEXT_MEMBER, encode_sample
from sla2_train.data.skips import SkipCounter
from sla2_train.data.streams import TrainStream


def _write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def _bad_shard(path, bomb):
    """One good sample (with planted pickles) and one sample per skip reason."""
    good = encode_sample("zz-good", torch.randn(3, 2, 5, 7), torch.randn(4, 6), {})
    other = encode_sample("x", torch.randn(3, 2, 5, 7), torch.randn(2, 6), {})
    nan = torch.randn(3, 2, 5, 7)
    nan[0, 1, 2, 3] = float("inf")
    members = [
        ("zz-garbage." + LATENTS_MEMBER, torch.randint(0, 255, (512,), dtype=torch.uint8).numpy().tobytes()),
        ("zz-garbage." + TEXT_MEMBER, other[TEXT_MEMBER]),
        ("zz-shape." + LATENTS_MEMBER, st_save({"latents": torch.randn(3, 2, 5, 8)})),
        ("zz-shape." + TEXT_MEMBER, other[TEXT_MEMBER]),
        ("zz-nan." + LATENTS_MEMBER, st_save({"latents": nan})),
        ("zz-nan." + TEXT_MEMBER, other[TEXT_MEMBER]),
        ("zz-missing." + LATENTS_MEMBER, other[LATENTS_MEMBER]),
        ("zz-good." + LATENTS_MEMBER, good[LATENTS_MEMBER]),
        ("zz-good." + TEXT_MEMBER, good[TEXT_MEMBER]),
        ("zz-good.pt", bomb),
        ("zz-good.pickle", bomb),
        ("zz-pickled." + LATENTS_MEMBER, bomb),
        ("zz-pickled." + TEXT_MEMBER, bomb),
    ]
    _write_tar(path, members)


def _truncate_inside(path, member):
    """Cut the shard in the middle of `member`'s payload, like an interrupted copy."""
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
    data = path.read_bytes()
    path.write_bytes(data[: info.offset_data + info.size // 2])


@pytest.fixture
def damaged(make_shards, pickle_bomb):
    folder, truth = make_shards(num=9, per_shard=3)
    _truncate_inside(folder / "shard-000001.tar", "ds-00004." + LATENTS_MEMBER)
    bomb, marker = pickle_bomb
    _bad_shard(folder / "zz-bad.tar", bomb)
    shards = sorted(str(p) for p in folder.glob("*.tar"))
    return shards, truth, marker


def test_bad_samples_skipped_counted_and_reported_once(damaged, caplog, monkeypatch):
    shards, truth, marker = damaged

    def forbidden(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    dm = LatentDataModule(shards, shards, batch_size=2, num_workers=0, text_len=8)
    with caplog.at_level(logging.WARNING, logger="sla2_train.data"):
        keys = [k for b in dm.val_dataloader() for k in b["keys"]]
    expected = {"corrupt_shard": 1, "missing_member": 1, "undecodable": 2, "bad_shape": 1, "non_finite": 1}
    assert dm.skipped == expected
    skip_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skip_lines) == sum(expected.values()), skip_lines
    assert all("\n" not in line for line in skip_lines)
    assert any("shard-000001.tar" in line and "corrupt_shard" in line for line in skip_lines)
    # Every intact sample arrives once; of the truncated shard only the sample before the cut.
    assert sorted(keys) == sorted(set(truth) - {"ds-00004", "ds-00005"} | {"zz-good"})
    assert not marker.exists(), "a pickle payload was executed"


def test_skip_counts_are_summed_over_workers(damaged):
    shards, _, marker = damaged
    dm = LatentDataModule(shards, shards, batch_size=2, num_workers=2, text_len=8)
    list(dm.val_dataloader())
    assert dm.skipped == {"corrupt_shard": 1, "missing_member": 1, "undecodable": 2, "bad_shape": 1, "non_finite": 1}
    # Training reads its shares again and again: it keeps going through the damage and keeps counting.
    loader = dm.train_dataloader()
    assert len([b for _ in range(2) for b in loader]) == 2 * dm.epoch_length
    assert sum(dm.skipped.values()) > 6
    assert not marker.exists()


@pytest.mark.parametrize("world", [1, 2])
def test_damage_counted_once_when_consumers_outnumber_shards(make_shards, monkeypatch, world):
    folder, truth = make_shards(num=3, per_shard=3)  # one shard, 2 workers × world ranks: all read it
    _truncate_inside(folder / "shard-000000.tar", "ds-00001." + LATENTS_MEMBER)
    total, keys = {}, []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        dm = LatentDataModule(str(folder), str(folder), batch_size=1, num_workers=2, text_len=8)
        keys += [k for b in dm.val_dataloader() for k in b["keys"]]
        total = {r: total.get(r, 0) + n for r, n in dm.skipped.items()}
    assert keys == ["ds-00000"]
    assert total["corrupt_shard"] == 1, total
    assert sum(total.values()) == 1, total


def test_all_shards_corrupt_fails_in_one_line_with_the_count(tmp_path, caplog):
    for i in range(3):
        (tmp_path / f"s{i}.tar").write_bytes(torch.randint(0, 255, (2048,), dtype=torch.uint8).numpy().tobytes())
    with caplog.at_level(logging.WARNING, logger="sla2_train.data"):
        with pytest.raises(DataError) as err:
            LatentDataModule(str(tmp_path), batch_size=1, num_workers=0, text_len=4, latent_shape=[1, 1, 1, 1], text_dim=1)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("data.train_shards: none of the 3 shards holds a usable sample")
    assert "corrupt_shard 3" in str(err.value)
    assert not caplog.records  # the check reads quietly: the one line says it all


def test_stream_that_finds_nothing_usable_stops_instead_of_spinning(tmp_path):
    for i in range(2):
        (tmp_path / f"s{i}.tar").write_bytes(torch.randint(0, 255, (2048,), dtype=torch.uint8).numpy().tobytes())
    stream = TrainStream([str(p) for p in sorted(tmp_path.glob("*.tar"))], batch_size=1, text_len=4,
                         counter=SkipCounter(), epoch_length=1)
    with pytest.raises(DataError, match="no usable sample in the last 16 shards opened .*corrupt_shard 17"):
        next(iter(stream))


def test_damage_read_again_is_counted_every_time_but_warned_once(make_shards, caplog):
    folder, _ = make_shards(num=6, per_shard=3)
    _truncate_inside(folder / "shard-000001.tar", "ds-00004." + LATENTS_MEMBER)
    dm = LatentDataModule(str(folder), batch_size=1, num_workers=0, text_len=8, epoch_length=12)
    with caplog.at_level(logging.WARNING, logger="sla2_train.data"):
        for _ in range(3):
            list(dm.train_dataloader())
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert dm.skipped["corrupt_shard"] > 1
    assert len(warned) == 1 and "shard-000001.tar" in warned[0], warned


def test_wrong_shape_is_skipped_even_without_index_or_configured_shapes(make_shards, tmp_path):
    folder, truth = make_shards(num=4, per_shard=4)
    (folder / "index.json").unlink()  # e.g. shards from another writer, or a glob over several folders
    odd = encode_sample("zz-odd", torch.randn(3, 2, 5, 8), torch.randn(2, 6), {})
    odd_dim = encode_sample("zz-odd-dim", torch.randn(3, 2, 5, 7), torch.randn(2, 5), {})
    _write_tar(folder / "zz.tar", [(f"{k}.{m}", p[m]) for k, p in (("zz-odd", odd), ("zz-odd-dim", odd_dim))
                                   for m in (LATENTS_MEMBER, TEXT_MEMBER)])
    dm = LatentDataModule(str(folder), str(folder), batch_size=8, num_workers=0, text_len=8)
    keys = [k for b in dm.val_dataloader() for k in b["keys"]]
    assert sorted(keys) == sorted(truth)
    assert dm.skipped["bad_shape"] == 2
