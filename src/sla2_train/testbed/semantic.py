"""A weight-free prompt-following metric: does the video show each captioned object, in its shape, moving its way?

Per captioned object (a colour is named once per caption, so the colour identifies the object):
  colour mask  pixels whose nearest palette colour in CIELAB is the object's, within MAX_DELTA_E; parts that a
               3×3 opening removes entirely (specks, one-pixel lines) are dropped, the rest is kept as it is.
  present      the mask covers at least MIN_AREA of the frame in at least MIN_FRAMES of the frames.
  shape        the mask's fill ratio in its bounding box (triangle 1/2, circle π/4, square 1), median over the
               present frames where its area is within UNOCCLUDED of its largest; the nearest ratio names the shape.
  direction    the centroid track's least-squares velocity times (frames − 1) is the net displacement; its
               dominant axis and sign is the direction seen, if the velocity reaches MIN_SPEED.
  speed        the same velocity's magnitude against the geometric mean of the slow and fast speeds.
An object is right when present, shape and direction all hold (speed is reported beside, not required).
"""

from __future__ import annotations

from dataclasses import dataclass
import sys
from functools import lru_cache

import numpy as np

from .captions import ObjectClaim, parse_caption
from .geometry import DIRECTIONS, SPEEDS
from .scenes import COLOURS

MAX_DELTA_E = 35.0     # the background's brightest texture is ≥ 53 ΔE from every object colour
MIN_AREA = 0.0025      # fraction of the frame; the smallest object at half visibility covers ~0.5%
MIN_FRAMES = 0.5       # fraction of frames where the object must be present
MIN_SPEED = SPEEDS["slow"] / 2  # slower than this (fraction of the width per frame) is standing still
UNOCCLUDED = 0.9      # frames within this fraction of the object's largest area are read for its shape
FILL_RATIOS = {"triangle": 0.5, "circle": np.pi / 4, "square": 1.0}
SPEED_SPLIT = float(np.sqrt(np.prod(list(SPEEDS.values()))))  # per frame, fraction of the width
ATTRIBUTES = ("present", "shape", "direction", "speed")
_BITS = 6  # colour lookup table resolution per channel: 4 levels of 255 per bin do not move a colour class


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB values in [0, 1], shape [..., 3]."""
    c = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


@lru_cache(maxsize=1)
def _colour_table() -> np.ndarray:
    """int8 [2^(3·_BITS)]: palette index of each quantised RGB colour, −1 where none is within MAX_DELTA_E."""
    levels = (np.arange(2**_BITS) + 0.5) * 2 ** (8 - _BITS) / 255
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    palette = _srgb_to_lab(np.asarray(list(COLOURS.values()), np.float64) / 255)
    dist = np.linalg.norm(_srgb_to_lab(grid)[:, None, :] - palette[None], axis=-1)
    nearest = dist.argmin(axis=1)
    return np.where(dist[np.arange(len(grid)), nearest] <= MAX_DELTA_E, nearest, -1).astype(np.int8)


def as_uint8_video(video, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """uint8 [F, H, W, 3] from a uint8 array/tensor, or a float one with its `value_range`: (0, 1) or (-1, 1).

    Floats must say their range (a model's [0, 1] output can dip below 0, so it cannot be guessed); values up to
    5% of the range outside it are clipped, anything further is an error.
    """
    torch = sys.modules.get("torch")  # a tensor means torch is loaded; the data command need not pay for it
    if torch is not None and isinstance(video, torch.Tensor):
        video = video.detach().cpu()
        video = video.numpy() if video.dtype == torch.uint8 else video.float().numpy()
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be [frames, height, width, 3] (channels last), got shape {tuple(video.shape)}")
    if video.dtype == np.uint8:
        return video
    if not np.issubdtype(video.dtype, np.floating):
        raise ValueError(f"video must be uint8 or floating point, got {video.dtype}")
    if value_range not in ((0, 1), (-1, 1)):
        raise ValueError(f"value_range must be (0, 1) or (-1, 1) for a float video, got {value_range}")
    lo, hi = value_range
    vmin, vmax = float(video.min()), float(video.max())
    slack = 0.05 * (hi - lo)
    if not np.isfinite(vmin + vmax) or vmin < lo - slack or vmax > hi + slack:
        raise ValueError(f"video values span [{vmin:.3g}, {vmax:.3g}], outside value_range={value_range}")
    return np.rint(np.clip((video - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def colour_labels(video: np.ndarray) -> np.ndarray:
    """int8 [F, H, W]: palette index (order of COLOURS) of each pixel of a uint8 video, −1 for none."""
    q = (video >> (8 - _BITS)).astype(np.int32)
    return _colour_table()[(q[..., 0] << (2 * _BITS)) | (q[..., 1] << _BITS) | q[..., 2]]


def _shift_reduce(mask: np.ndarray, op, pad: bool) -> np.ndarray:
    """op over each pixel's 3×3 neighbourhood of [F, H, W] masks (and: erosion, or: dilation)."""
    p = np.pad(mask, ((0, 0), (1, 1), (1, 1)), constant_values=pad)
    out = mask.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out = op(out, p[:, dy : dy + mask.shape[1], dx : dx + mask.shape[2]])
    return out


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Drop specks and one-pixel lines, keep the rest exactly: a 3×3 opening marks what survives, and regrowing
    it inside the original mask (reconstruction) restores the shapes' thin parts, such as a triangle's apex."""
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    out = np.zeros_like(mask)
    if len(rows) == 0:
        return out
    box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # work where the colour is
    inside = mask[box]
    kept = _shift_reduce(_shift_reduce(inside, np.logical_and, True), np.logical_or, False)
    while True:
        grown = _shift_reduce(kept, np.logical_or, False) & inside
        if np.array_equal(grown, kept):
            break
        kept = grown
    out[box] = kept
    return out


@dataclass(frozen=True)
class ObjectResult:
    claim: ObjectClaim
    present: bool
    shape: bool
    direction: bool
    speed: bool
    shape_seen: str | None
    direction_seen: str | None
    speed_seen: str | None
    fill_ratio: float | None
    displacement: tuple[float, float] | None  # (dx, dy) in pixels over the clip, y downwards

    @property
    def correct(self) -> bool:
        return self.present and self.shape and self.direction


def _measure(mask: np.ndarray, claim: ObjectClaim) -> ObjectResult:
    f, h, w = mask.shape
    area = mask.sum(axis=(1, 2))
    present_frames = np.flatnonzero(area >= MIN_AREA * h * w)
    if len(present_frames) < max(MIN_FRAMES * f, 1):
        return ObjectResult(claim, False, False, False, False, None, None, None, None, None)
    fills, xs, ys = [], [], []
    for t in present_frames:
        rows, cols = np.flatnonzero(mask[t].any(1)), np.flatnonzero(mask[t].any(0))
        box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        fills.append(area[t] / box)
        yy, xx = np.nonzero(mask[t])
        xs.append(xx.mean())
        ys.append(yy.mean())
    # Occlusion only removes area: the fill ratio is read where the object shows most of itself.
    full = area[present_frames] >= UNOCCLUDED * area[present_frames].max()
    fill = float(np.median(np.asarray(fills)[full]))
    shape_seen = min(FILL_RATIOS, key=lambda s: abs(FILL_RATIOS[s] - fill))
    if len(present_frames) >= 2:
        t = present_frames - present_frames.mean()
        vx, vy = (float((t * (np.asarray(v) - np.mean(v))).sum() / (t * t).sum()) for v in (xs, ys))
    else:
        vx = vy = 0.0
    dx, dy = vx * (f - 1), vy * (f - 1)
    direction_seen = None
    if max(abs(vx), abs(vy)) >= MIN_SPEED * w:
        step = (int(np.sign(dx)), 0) if abs(dx) >= abs(dy) else (0, int(np.sign(dy)))
        direction_seen = next(d for d, s in DIRECTIONS.items() if s == step)
    speed_seen = "fast" if np.hypot(vx, vy) / w > SPEED_SPLIT else "slow"
    return ObjectResult(claim, True, shape_seen == claim.shape, direction_seen == claim.direction,
                        speed_seen == claim.speed, shape_seen, direction_seen, speed_seen, fill, (dx, dy))


def score_labels(labels: np.ndarray, claims: list[ObjectClaim]) -> list[ObjectResult]:
    """Per-claim results from a colour label map (colour_labels of the video)."""
    index = {c: i for i, c in enumerate(COLOURS)}
    return [_measure(clean_mask(labels == index[c.colour]), c) for c in claims]


def fraction_right(results: list[ObjectResult], attribute: str = "correct") -> float:
    """The fraction of a video's captioned objects right on `attribute` (correct: on all); 0 without objects."""
    return float(np.mean([getattr(r, attribute) for r in results])) if results else 0.0


def score_video(video, text: str, value_range: tuple[float, float] | None = None) -> tuple[list[ObjectResult], float]:
    """(per-object results, video score = the fraction of captioned objects shown right) for one video."""
    results = score_labels(colour_labels(as_uint8_video(video, value_range)), parse_caption(text))
    return results, fraction_right(results)


def _summary(per_video: list[list[ObjectResult]]) -> dict:
    objects = [r for rs in per_video for r in rs]
    out = {"accuracy": fraction_right(objects),
           "video_accuracy": float(np.mean([bool(rs) and all(r.correct for r in rs) for rs in per_video]))}
    out.update({a: fraction_right(objects, a) for a in ATTRIBUTES})
    return out


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A fixed permutation with no fixed point: video perm[i] is scored against caption perm[i + 1]."""
    if n < 2:
        raise ValueError(f"a shuffled-caption chance level needs at least 2 videos, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, int)
    out[perm] = np.roll(perm, -1)
    return out


def prompt_following(videos, captions, value_range: tuple[float, float] | None = None) -> dict:
    """Prompt-following accuracy of videos against their captions, and the same with captions shuffled.

    Returns accuracy (captioned objects with every attribute right), video_accuracy (videos with all objects
    right), the per-attribute accuracies, and chance_* : the same numbers with each video scored against
    another video's caption (a fixed derangement), i.e. what a video unrelated to its prompt scores here.
    """
    videos, captions = list(videos), list(captions)
    if len(videos) != len(captions):
        raise ValueError(f"got {len(videos)} videos for {len(captions)} captions")
    claims = [parse_caption(c) for c in captions]
    other = derangement(len(captions))
    own, shuffled = [], []
    for i, video in enumerate(videos):
        labels = colour_labels(as_uint8_video(video, value_range))
        own.append(score_labels(labels, claims[i]))
        shuffled.append(score_labels(labels, claims[other[i]]))
    out = {"num_videos": len(own), "num_objects": sum(len(r) for r in own), **_summary(own)}
    out.update({f"chance_{k}": v for k, v in _summary(shuffled).items()})
    out["chance"] = out.pop("chance_accuracy")
    return out
