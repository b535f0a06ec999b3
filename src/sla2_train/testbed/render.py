"""Draw a scene: a textured background (shifted when the camera pans) under flat-coloured shapes in depth order."""

from __future__ import annotations

import numpy as np

from .geometry import DIRECTIONS, PAN_SPEED, centres, radius, shape_mask
from .scenes import BACKGROUND_COLOURS, COLOURS, SceneSpec

_LOW, _HIGH = 0.55, 1.0  # the texture scales the background colour between these factors


def _texture(kind: str, height: int, width: int, rng: np.random.Generator, pan: str | None) -> np.ndarray:
    """float32 [height, width] in [0, 1]: the background pattern, drawn once on a canvas the pan slides over."""
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    if kind == "stripes":
        period = rng.uniform(12, 28)
        # Vertical, diagonal or horizontal, but never parallel to the pan (a pan along the stripes shows nothing).
        parallel = {"up": 0.0, "down": 0.0, "left": np.pi / 2, "right": np.pi / 2}.get(pan)
        angle = rng.choice([a for a in (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4) if a != parallel])
        phase = (x * np.cos(angle) + y * np.sin(angle)) / period
        return (np.floor(phase) % 2).astype(np.float32)
    if kind == "checker":
        cell = int(rng.integers(10, 24))
        return ((np.floor(x / cell) + np.floor(y / cell)) % 2).astype(np.float32)
    if kind == "noise":  # smooth noise: a coarse random grid, bilinearly upsampled
        cell = 16
        gh, gw = height // cell + 2, width // cell + 2
        grid = rng.random((gh, gw), dtype=np.float32)
        gy, gx = y[:, 0] / cell, x[0] / cell
        iy, ix = gy.astype(int), gx.astype(int)
        fy, fx = (gy - iy)[:, None], (gx - ix)[None, :]
        top = grid[iy][:, ix] * (1 - fx) + grid[iy][:, ix + 1] * fx
        bottom = grid[iy + 1][:, ix] * (1 - fx) + grid[iy + 1][:, ix + 1] * fx
        return top * (1 - fy) + bottom * fy
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = x * np.cos(angle) + y * np.sin(angle)
        return (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    raise ValueError(f"unknown background {kind!r}")


def _background(scene: SceneSpec, num_frames: int, height: int, width: int) -> np.ndarray:
    """uint8 [num_frames, height, width, 3]: the texture seen through a window that moves with the camera."""
    dx, dy = DIRECTIONS[scene.pan] if scene.pan else (0, 0)
    shift = np.rint(PAN_SPEED * width * np.arange(num_frames)).astype(int)
    travel = int(shift[-1])
    canvas_h, canvas_w = height + travel * abs(dy), width + travel * abs(dx)
    tex = _texture(scene.background, canvas_h, canvas_w, np.random.default_rng(scene.seed), scene.pan)
    base = np.asarray(BACKGROUND_COLOURS[scene.background_colour], np.float32)
    canvas = np.rint((_LOW + (_HIGH - _LOW) * tex)[..., None] * base).astype(np.uint8)
    # Panning right moves the window right over the canvas: the background slides left on screen.
    top0 = 0 if dy >= 0 else travel
    left0 = 0 if dx >= 0 else travel
    return np.stack([canvas[top0 + dy * s : top0 + dy * s + height, left0 + dx * s : left0 + dx * s + width]
                     for s in shift])


def render(scene: SceneSpec, num_frames: int = 16, height: int = 128, width: int = 256) -> np.ndarray:
    """uint8 [num_frames, height, width, 3], RGB; the same scene and size always give the same pixels."""
    if num_frames < 1 or height < 8 or width < 8:
        raise ValueError(f"render needs num_frames >= 1 and height, width >= 8, got {num_frames}, {height}, {width}")
    video = _background(scene, num_frames, height, width)
    for obj in sorted(scene.objects, key=lambda o: -o.depth):  # far to near: nearer shapes are painted over
        colour = np.asarray(COLOURS[obj.colour], np.uint8)
        r = radius(obj, height)
        for t, (cx, cy) in enumerate(centres(obj, num_frames, height, width)):
            mask, (top, left) = shape_mask(obj.shape, cx, cy, r, height, width)
            video[t, top : top + mask.shape[0], left : left + mask.shape[1]][mask] = colour
    return video
