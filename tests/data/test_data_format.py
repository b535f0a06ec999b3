"""Sample encoding/decoding: exact round trip, clear rejection of bad payloads, never unpickling."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save as st_save

from sla2_train.data.format import (
    LATENTS_MEMBER,
    META_MEMBER,
    TEXT_MEMBER,
    BadShape,
    MissingMember,
    NonFinite,
    Undecodable,
    decode_sample,
    encode_sample,
)


def _raw(key, members):
    return {"__key__": key, **members}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_exact_in_storage_dtype(dtype):
    latents, text = torch.randn(4, 3, 5, 6) * 3, torch.randn(7, 8) - 2
    members = encode_sample("k-1", latents, text, {"caption": "a fox"}, dtype)
    out = decode_sample(_raw("k-1", members), latent_shape=(4, 3, 5, 6), text_dim=8)
    cast = getattr(torch, dtype)
    assert out["key"] == "k-1"
    assert out["latents"].dtype == cast and out["text_embeds"].dtype == cast
    assert torch.equal(out["latents"], latents.to(cast))
    assert torch.equal(out["text_embeds"], text.to(cast))
    meta = json.loads(members[META_MEMBER])
    assert meta["caption"] == "a fox" and meta["latent_shape"] == [4, 3, 5, 6] and meta["text_len"] == 7
    assert meta["dtype"] == dtype


def test_bad_keys_and_shapes_are_refused_at_write_time():
    with pytest.raises(ValueError, match="invalid sample key"):
        encode_sample("a.b", torch.randn(1, 1, 1, 1), torch.randn(1, 2), {})
    with pytest.raises(ValueError, match=r"latents must be \[C, F, H, W\]"):
        encode_sample("a", torch.randn(2, 2, 2), torch.randn(1, 2), {})
    with pytest.raises(ValueError, match="text_embeds must be"):
        encode_sample("a", torch.randn(1, 1, 1, 1), torch.randn(0, 2), {})


def test_unusable_samples_raise_their_skip_reason():
    good = encode_sample("k", torch.randn(2, 1, 3, 3), torch.randn(4, 5), {})
    with pytest.raises(MissingMember):
        decode_sample(_raw("k", {LATENTS_MEMBER: good[LATENTS_MEMBER]}))
    with pytest.raises(Undecodable):
        decode_sample(_raw("k", {**good, LATENTS_MEMBER: torch.randint(0, 255, (300,), dtype=torch.uint8).numpy().tobytes()}))
    with pytest.raises(Undecodable, match="no tensor named 'latents'"):
        decode_sample(_raw("k", {**good, LATENTS_MEMBER: st_save({"other": torch.randn(2)})}))
    with pytest.raises(BadShape):
        decode_sample(_raw("k", good), latent_shape=(2, 1, 3, 4))
    with pytest.raises(BadShape):
        decode_sample(_raw("k", good), text_dim=6)
    nan = torch.randn(2, 1, 3, 3)
    nan[1, 0, 2, 1] = float("nan")
    with pytest.raises(NonFinite):
        decode_sample(_raw("k", {**good, LATENTS_MEMBER: st_save({"latents": nan})}))


def test_pickle_payload_is_never_unpickled(pickle_bomb, monkeypatch):
    bomb, marker = pickle_bomb
    good = encode_sample("k", torch.randn(2, 1, 3, 3), torch.randn(4, 5), {})

    def forbidden(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    # A pickle disguised as a safetensors member is rejected as undecodable, not executed.
    with pytest.raises(Undecodable):
        decode_sample(_raw("k", {**good, LATENTS_MEMBER: bomb}))
    with pytest.raises(Undecodable):
        decode_sample(_raw("k", {**good, TEXT_MEMBER: bomb}))
    assert not marker.exists()
