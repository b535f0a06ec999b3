"""Where each object is in each frame and which pixels it covers: one definition for the sampler and the renderer.

Coordinates: x to the right and y downwards, as on screen. A scene stores positions normalised to the frame
(x in [0, 1] of the width, y in [0, 1] of the height); sizes are fractions of the height and speeds fractions of
the width per frame, so one pixel speed holds on both axes and a shape stays a shape at any aspect ratio.
"""

from __future__ import annotations

import numpy as np

# Screen directions as (dx, dy) unit steps; y grows downwards, so "up" is negative y.
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Distance travelled per frame, as a fraction of the frame width.
SPEEDS = {"slow": 0.006, "fast": 0.014}
PAN_SPEED = 0.008  # background shift per frame while the camera pans, as a fraction of the frame width


def centres(obj, num_frames: int, height: int, width: int) -> np.ndarray:
    """float64 [num_frames, 2]: the object's centre (x, y) in pixels at each frame."""
    dx, dy = DIRECTIONS[obj.direction]
    step = SPEEDS[obj.speed] * width * np.arange(num_frames)
    x = obj.start[0] * width + dx * step
    y = obj.start[1] * height + dy * step
    return np.stack([x, y], axis=1)


def radius(obj, height: int) -> float:
    """Half the object's extent in pixels (its bounding box is 2·radius on each side)."""
    return obj.size * height / 2


def shape_mask(shape: str, cx: float, cy: float, r: float, height: int, width: int):
    """(bool mask, (top, left)): the pixels whose centres lie inside the shape, within its clipped bounding box."""
    top, bottom = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, height)
    left, right = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, width)
    if top >= bottom or left >= right:
        return np.zeros((0, 0), bool), (0, 0)
    y = np.arange(top, bottom, dtype=np.float64)[:, None] + 0.5 - cy
    x = np.arange(left, right, dtype=np.float64)[None, :] + 0.5 - cx
    if shape == "circle":
        mask = x * x + y * y <= r * r
    elif shape == "square":
        mask = (np.abs(x) <= r) & (np.abs(y) <= r)
    elif shape == "triangle":  # apex up, base at the bottom of the box: half its width at depth y below the apex
        mask = (y <= r) & (np.abs(x) <= (y + r) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask, (top, left)


def label_maps(objects, num_frames: int, height: int, width: int) -> np.ndarray:
    """int8 [num_frames, height, width]: index of the visible object at each pixel, -1 for background.

    Objects are painted from the farthest (largest depth) to the nearest, so nearer ones occlude.
    """
    labels = np.full((num_frames, height, width), -1, np.int8)
    for i in sorted(range(len(objects)), key=lambda k: -objects[k].depth):
        obj = objects[i]
        r = radius(obj, height)
        for t, (cx, cy) in enumerate(centres(obj, num_frames, height, width)):
            mask, (top, left) = shape_mask(obj.shape, cx, cy, r, height, width)
            labels[t, top : top + mask.shape[0], left : left + mask.shape[1]][mask] = i
    return labels
