"""Checks a DataModule runs when it is built, so unusable data fails in one line before any training step.

Shards made for another model (480p Wan latents given to the tiny model) would otherwise run a sequence the
model was never sized for, and shards that are all damaged would only show up as a worker crash after a
screenful of skip warnings.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from .errors import DataError
from .format import SkipSample, decode_sample
from .reading import raw_samples
from .skips import classify


def check_shapes_match(
    where: str,
    shard_shape: Sequence[int] | None,
    shard_dim: int | None,
    latent_shape: Sequence[int] | None,
    text_dim: int | None,
) -> None:
    """The shards' latent shape and text width (from index.json) against what the model is built for."""
    latent_bad = shard_shape is not None and latent_shape is not None and list(shard_shape) != list(latent_shape)
    text_bad = shard_dim is not None and text_dim is not None and shard_dim != text_dim
    if not (latent_bad or text_bad):
        return
    # A side left open (None) agrees with anything: show it as the shards' value.
    latent_shape = shard_shape if latent_shape is None else latent_shape
    text_dim = shard_dim if text_dim is None else text_dim
    raise DataError(
        f"the shards in {where} hold latents {list(shard_shape or [])} with text_dim {shard_dim} (index.json), "
        f"but the model is built for latents {list(latent_shape or [])} with text_dim {text_dim} "
        "(data.latent_shape / data.text_dim, from model.latent_shape / model.text_dim): choose the model preset "
        "these shards were prepared for (e.g. model=wan2_1 for 81-frame 480p Wan latents) or prepare shards "
        "of the model's size"
    )


def first_readable_sample(
    shards: Sequence[str],
    latent_shape: Sequence[int] | None,
    text_dim: int | None,
    check_finite: bool,
) -> tuple[str | None, Counter]:
    """(key of the first usable sample, why the ones before it were not); reads no further than that sample.

    Healthy data costs one sample's read; only data with no usable sample is read to its end.
    """
    reasons: Counter = Counter()

    def note(exn: BaseException) -> bool:
        reason = classify(exn)
        if reason is None:
            raise exn
        reasons[reason] += 1
        return True

    for raw in raw_samples(shards, note):
        try:
            return decode_sample(raw, latent_shape, text_dim, check_finite)["key"], reasons
        except SkipSample as exn:
            note(exn)
    return None, reasons


def check_readable(
    key: str,
    shards: Sequence[str],
    latent_shape: Sequence[int] | None,
    text_dim: int | None,
    check_finite: bool,
) -> None:
    """DataError naming `key` when no shard holds a single usable sample."""
    found, reasons = first_readable_sample(shards, latent_shape, text_dim, check_finite)
    if found is not None:
        return
    why = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())) or "no samples at all"
    raise DataError(
        f"{key}: none of the {len(shards)} shards holds a usable sample (skipped: {why}); first shard: {shards[0]}"
    )
