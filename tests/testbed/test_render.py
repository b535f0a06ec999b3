"""The renderer draws each object exactly where the geometry puts it, over a muted background that pans."""

from __future__ import annotations

import numpy as np
import pytest

from sla2_train.testbed import COLOURS, SceneSpec, render, sample_scene
from sla2_train.testbed.geometry import DIRECTIONS, PAN_SPEED, label_maps
from sla2_train.testbed.semantic import colour_labels


@pytest.mark.parametrize("num_frames,height,width", [(16, 128, 256), (9, 48, 96), (5, 64, 64)])
def test_objects_cover_their_pixels_and_the_background_is_no_object_colour(num_frames, height, width):
    rng = np.random.default_rng()
    for _ in range(10):
        scene = sample_scene(rng, num_frames=num_frames, aspect=width / height)
        video = render(scene, num_frames, height, width)
        assert video.shape == (num_frames, height, width, 3) and video.dtype == np.uint8
        labels = label_maps(scene.objects, num_frames, height, width)
        for i, o in enumerate(scene.objects):
            assert (labels == i).any()
            assert (video[labels == i] == COLOURS[o.colour]).all()
        # Every background pixel is far from every object colour (the metric's segmentation relies on it).
        assert (colour_labels(video)[labels < 0] == -1).all()


def test_render_is_deterministic_and_the_texture_follows_the_seed():
    scene = sample_scene(np.random.default_rng())
    assert np.array_equal(render(scene), render(scene))
    noise = SceneSpec(scene.objects, "noise", scene.background_colour, scene.pan, scene.seed)
    reseeded = SceneSpec(scene.objects, "noise", scene.background_colour, scene.pan, scene.seed + 1)
    assert not np.array_equal(render(noise), render(reseeded))


@pytest.mark.parametrize("pan", list(DIRECTIONS))
@pytest.mark.parametrize("background", ["stripes", "checker", "noise"])
def test_camera_pan_slides_the_background_the_other_way(pan, background):
    width, height, frames = 128, 64, 6
    scene = SceneSpec((), background, "grey", pan, seed=int(np.random.default_rng().integers(2**31)))
    video = render(scene, frames, height, width).astype(int)
    step = np.diff(np.rint(PAN_SPEED * width * np.arange(frames)).astype(int))
    dx, dy = DIRECTIONS[pan]
    for t, s in enumerate(step):
        # Panning right: what was at x + s is now at x (the window moved right).
        a, b = video[t], video[t + 1]
        sx, sy = dx * s, dy * s
        src = a[max(sy, 0) : height + min(sy, 0), max(sx, 0) : width + min(sx, 0)]
        dst = b[max(-sy, 0) : height + min(-sy, 0), max(-sx, 0) : width + min(-sx, 0)]
        assert np.array_equal(src, dst)
        assert not np.array_equal(a, b)  # and it did move
    still = render(SceneSpec((), background, "grey", None, scene.seed), frames, height, width)
    assert (still == still[:1]).all()
