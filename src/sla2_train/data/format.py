"""The shard format: one sample = three tar members sharing a key; tensors are safetensors, never pickles.

Layout of a sample with key K inside a webdataset tar shard:
    K.latents.safetensors   tensor "latents"     [C, F, H, W]  normalised VAE latents, bf16 or fp32
    K.text.safetensors      tensor "text_embeds" [L, text_dim] UNPADDED (L = true token count)
    K.meta.json             caption, source, source hash, shapes
Decoding is explicit (safetensors.torch.load on the bytes) so that nothing in a shard can execute code.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

FORMAT_VERSION = 1
LATENTS_MEMBER = "latents.safetensors"
TEXT_MEMBER = "text.safetensors"
META_MEMBER = "meta.json"
MEMBERS = (LATENTS_MEMBER, TEXT_MEMBER, META_MEMBER)
INDEX_NAME = "index.json"
STORE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}

# webdataset splits "<key>.<suffix>" at the FIRST dot, so a key with a dot or slash would corrupt the grouping.
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


class SkipSample(Exception):
    """A sample that cannot be used; `reason` is the counter it is reported under."""

    reason = "undecodable"

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key

    def with_url(self, url: str | None) -> "SkipSample":
        """Name the shard in the one warning line (webdataset's convention: url appended to args)."""
        if url:
            self.args = self.args + (url,)
        return self


class CorruptShard(SkipSample):
    """A tar shard that cannot be read (from some point on): truncated, bad header, unreadable file."""

    reason = "corrupt_shard"


class MissingMember(SkipSample):
    reason = "missing_member"


class Undecodable(SkipSample):
    reason = "undecodable"


class BadShape(SkipSample):
    reason = "bad_shape"


class NonFinite(SkipSample):
    reason = "non_finite"


def check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise ValueError(f"invalid sample key {key!r}: use letters, digits, '_' or '-' only (no dots)")
    return key


def encode_sample(
    key: str, latents: torch.Tensor, text_embeds: torch.Tensor, meta: dict[str, Any], dtype: str = "bfloat16"
) -> dict[str, bytes]:
    """Tensors → the three member payloads (bytes), keyed by member name without the sample key."""
    check_key(key)
    if latents.ndim != 4:
        raise ValueError(f"latents must be [C, F, H, W], got shape {list(latents.shape)} for sample {key}")
    if text_embeds.ndim != 2 or text_embeds.shape[0] < 1:
        raise ValueError(f"text_embeds must be [L>=1, text_dim], got shape {list(text_embeds.shape)} for sample {key}")
    if dtype not in STORE_DTYPES:
        raise ValueError(f"unknown storage dtype {dtype!r}; choose one of {sorted(STORE_DTYPES)}")
    torch_dtype = STORE_DTYPES[dtype]
    meta = dict(meta)
    meta.update(
        key=key,
        latent_shape=list(latents.shape),
        text_len=int(text_embeds.shape[0]),
        text_dim=int(text_embeds.shape[1]),
        dtype=dtype,
        format_version=FORMAT_VERSION,
    )
    return {
        LATENTS_MEMBER: st_save({"latents": latents.detach().to("cpu", torch_dtype).contiguous()}),
        TEXT_MEMBER: st_save({"text_embeds": text_embeds.detach().to("cpu", torch_dtype).contiguous()}),
        META_MEMBER: json.dumps(meta, sort_keys=True).encode("utf-8"),
    }


def _load_tensor(payload: bytes, name: str, member: str, key: str) -> torch.Tensor:
    try:
        tensors = st_load(payload)
    except Exception as exn:  # safetensors raises its own SafetensorError; any failure means "cannot decode"
        raise Undecodable(f"{member} is not valid safetensors ({type(exn).__name__}: {exn})", key) from None
    if name not in tensors:
        raise Undecodable(f"{member} has no tensor named {name!r} (found {sorted(tensors)})", key)
    tensor = tensors[name]
    if not tensor.is_floating_point():
        raise Undecodable(f"{member} tensor {name!r} has non-float dtype {tensor.dtype}", key)
    return tensor


def decode_sample(
    raw: dict[str, Any],
    latent_shape: tuple[int, ...] | None = None,
    text_dim: int | None = None,
    check_finite: bool = True,
) -> dict[str, Any]:
    """A raw webdataset sample (member bytes) → {"key", "latents", "text_embeds"}; raises SkipSample if unusable."""
    key = raw.get("__key__", "?")
    for member in (LATENTS_MEMBER, TEXT_MEMBER):
        if not isinstance(raw.get(member), (bytes, bytearray)):
            raise MissingMember(f"member {member} is missing", key)
    latents = _load_tensor(raw[LATENTS_MEMBER], "latents", LATENTS_MEMBER, key)
    text = _load_tensor(raw[TEXT_MEMBER], "text_embeds", TEXT_MEMBER, key)
    if latents.ndim != 4 or (latent_shape is not None and tuple(latents.shape) != tuple(latent_shape)):
        raise BadShape(f"latents shape {list(latents.shape)} != expected {list(latent_shape or [])}", key)
    if text.ndim != 2 or text.shape[0] < 1 or (text_dim is not None and text.shape[1] != text_dim):
        raise BadShape(f"text_embeds shape {list(text.shape)} != expected [L>=1, {text_dim}]", key)
    # A NaN/Inf latent would silently poison every later step; checking costs ~1 ms at 1.3B-480p size.
    if check_finite and not (torch.isfinite(latents).all() and torch.isfinite(text).all()):
        raise NonFinite("latents or text_embeds contain NaN/Inf", key)
    return {"key": key, "latents": latents, "text_embeds": text}


def shard_name(index: int, prefix: str = "shard") -> str:
    return f"{prefix}-{index:06d}.tar"


def num_shards(num_samples: int, samples_per_shard: int) -> int:
    return max(1, math.ceil(num_samples / samples_per_shard))
