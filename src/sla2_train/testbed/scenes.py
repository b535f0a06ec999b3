"""Scene specifications and their sampler: which shapes, in which colours, move where, over which background.

A held-out split tests composition: a fixed set of (colour, shape, direction) combinations never appears in
"train" scenes, and every "heldout" scene contains at least one of them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .geometry import DIRECTIONS, SPEEDS, label_maps

# Saturated and far apart in CIELAB (the nearest pair, red and orange, is 45 ΔE apart): colour segments them.
COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 240),
    "yellow": (240, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 210, 220),
    "white": (245, 245, 245),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
# Texture names; the background colour is a muted, dark base that the texture modulates between 55% and 100%.
BACKGROUNDS = ("stripes", "checker", "noise", "gradient")
BACKGROUND_COLOURS = {
    "grey": (100, 100, 100),
    "brown": (104, 84, 64),
    "slate": (66, 80, 100),
    "olive": (88, 94, 60),
}
PANS = tuple(DIRECTIONS)  # the camera pans in a screen direction, or not at all (None)

SPLITS = ("train", "heldout")
# Object sizes as a fraction of the frame height; margin keeps shapes off the frame edge.
SIZE_RANGE = (0.2, 0.3)
_MARGIN = 0.02
# Occlusion is allowed but bounded: every object keeps at least MIN_VISIBLE of its own area in at least
# MIN_VISIBLE_FRAMES of the frames, so the caption stays true of what is on screen.
MIN_VISIBLE, MIN_VISIBLE_FRAMES = 0.5, 0.75
_CHECK_HEIGHT = 32  # the occlusion check rasterises at this height (aspect kept): cheap and close enough


def _is_heldout(colour: str, shape: str, direction: str) -> bool:
    c, s, d = list(COLOURS).index(colour), SHAPES.index(shape), list(DIRECTIONS).index(direction)
    return (c + 2 * s + 3 * d) % 8 == 0  # 12 of the 96 combinations; 1 or 2 per colour, every shape and direction


HELDOUT_COMBINATIONS = frozenset(
    combo for combo in itertools.product(COLOURS, SHAPES, DIRECTIONS) if _is_heldout(*combo))


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    direction: str
    speed: str
    start: tuple[float, float]  # centre at frame 0, normalised (x of the width, y of the height)
    size: float                 # extent as a fraction of the frame height
    depth: int                  # 0 is nearest: it occludes the others

    @property
    def combination(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.direction)


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ObjectSpec, ...]
    background: str
    background_colour: str
    pan: str | None
    seed: int  # seeds the background texture

    def to_dict(self) -> dict:
        return {"objects": [{**vars(o), "start": list(o.start)} for o in self.objects], "background": self.background,
                "background_colour": self.background_colour, "pan": self.pan, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict) -> "SceneSpec":
        objects = tuple(ObjectSpec(**{**o, "start": tuple(o["start"])}) for o in d["objects"])
        return cls(objects, d["background"], d["background_colour"], d["pan"], int(d["seed"]))


def check_fits(num_frames: int, aspect: float) -> None:
    """Raise unless the fastest, largest shape's path fits in a frame of this aspect for num_frames frames."""
    if num_frames < 2:
        raise ValueError(f"num_frames must be at least 2 (motion needs two frames), got {num_frames}")
    travel = max(SPEEDS.values()) * (num_frames - 1)  # fraction of the width
    size = SIZE_RANGE[1]
    # (travel, room) as fractions of the width for horizontal motion and of the height for vertical motion.
    for axis, span, room in (("across", travel, 1 - size / aspect - 2 * _MARGIN),
                             ("up or down", travel * aspect, 1 - size - 2 * _MARGIN)):
        if span > room:
            raise ValueError(f"num_frames={num_frames} is too long for a fast shape moving {axis} to stay in a "
                             f"frame of aspect {aspect:g} (width/height): it travels {span:.2f} of the frame, "
                             f"{room:.2f} fits")


def _start(rng, direction: str, speed: str, size: float, num_frames: int, aspect: float) -> tuple[float, float]:
    """A frame-0 centre from which the whole path keeps the shape inside the frame (by _MARGIN)."""
    dx, dy = DIRECTIONS[direction]
    travel = SPEEDS[speed] * (num_frames - 1)  # fraction of the width
    out = []
    for d, half, span in ((dx, size / (2 * aspect), travel), (dy, size / 2, travel * aspect)):
        lo, hi = half + _MARGIN, 1 - half - _MARGIN
        lo, hi = (lo + span, hi) if d < 0 else (lo, hi - span) if d > 0 else (lo, hi)
        out.append(round(float(rng.uniform(lo, hi)), 4))
    return out[0], out[1]


def _visible_enough(objects, num_frames: int, aspect: float) -> bool:
    h = _CHECK_HEIGHT
    w = round(h * aspect)
    labels = label_maps(objects, num_frames, h, w).reshape(num_frames, -1)
    for i, obj in enumerate(objects):
        alone = label_maps((obj,), num_frames, h, w).reshape(num_frames, -1)
        own = np.maximum((alone == 0).sum(1), 1)
        frac = (labels == i).sum(1) / own
        if (frac >= MIN_VISIBLE).mean() < MIN_VISIBLE_FRAMES:
            return False
    return True


def _combination(rng, split: str, first: bool, colours_left: list[str]) -> tuple[str, str, str]:
    if split == "heldout" and first:  # the held-out scene's first object is one of the held-out combinations
        options = sorted(HELDOUT_COMBINATIONS)
        return options[rng.integers(len(options))]
    while True:
        combo = (colours_left[rng.integers(len(colours_left))], SHAPES[rng.integers(len(SHAPES))],
                 list(DIRECTIONS)[rng.integers(len(DIRECTIONS))])
        if split == "heldout" or combo not in HELDOUT_COMBINATIONS:
            return combo


def sample_scene(rng: np.random.Generator, split: str = "train", num_frames: int = 17,
                 aspect: float = 2.0) -> SceneSpec:
    """A random scene of 1-3 objects in distinct colours whose paths stay in frame for `num_frames` frames.

    `aspect` is the width/height of the frames it will be rendered at (it decides how far vertical motion goes).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    check_fits(num_frames, aspect)
    while True:  # rejection: redraw scenes where an object is hidden too long
        n = int(rng.integers(1, 4))
        colours_left, objects = list(COLOURS), []
        for k in range(n):
            colour, shape, direction = _combination(rng, split, k == 0, colours_left)
            colours_left.remove(colour)
            speed = list(SPEEDS)[rng.integers(len(SPEEDS))]
            size = round(float(rng.uniform(*SIZE_RANGE)), 4)
            start = _start(rng, direction, speed, size, num_frames, aspect)
            objects.append(ObjectSpec(colour, shape, direction, speed, start, size, depth=0))
        depths = rng.permutation(n)
        objects = tuple(ObjectSpec(**{**vars(o), "depth": int(d)}) for o, d in zip(objects, depths))
        background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        background_colour = list(BACKGROUND_COLOURS)[rng.integers(len(BACKGROUND_COLOURS))]
        pan = None if rng.random() < 0.5 else PANS[rng.integers(len(PANS))]
        seed = int(rng.integers(2**31))
        if n == 1 or _visible_enough(objects, num_frames, aspect):
            return SceneSpec(objects, background, background_colour, pan, seed)


__all__ = ["BACKGROUNDS", "BACKGROUND_COLOURS", "COLOURS", "DIRECTIONS", "HELDOUT_COMBINATIONS", "ObjectSpec",
           "SHAPES", "SPEEDS", "SPLITS", "SceneSpec", "sample_scene"]
