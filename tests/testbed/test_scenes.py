"""Scene sampling: determinism, distinct colours, paths inside the frame, bounded occlusion, the held-out rule."""

from __future__ import annotations

import numpy as np
import pytest

from sla2_train.testbed import (BACKGROUND_COLOURS, BACKGROUNDS, COLOURS, DIRECTIONS, HELDOUT_COMBINATIONS, SHAPES,
                                SPEEDS, SceneSpec, sample_scene)
from sla2_train.testbed.geometry import centres, label_maps, radius
from sla2_train.testbed.scenes import MIN_VISIBLE, MIN_VISIBLE_FRAMES


def _scenes(seed, n, split="train", **kw):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, split, **kw) for _ in range(n)]


def test_same_seed_same_scenes_other_seed_other_scenes():
    seed = int(np.random.default_rng().integers(2**31))
    assert _scenes(seed, 20) == _scenes(seed, 20)
    assert _scenes(seed, 20) != _scenes(seed + 1, 20)


def test_objects_have_distinct_colours_and_depths_and_known_values():
    for scene in _scenes(None, 200):
        assert 1 <= len(scene.objects) <= 3
        assert len({o.colour for o in scene.objects}) == len(scene.objects)
        assert sorted(o.depth for o in scene.objects) == list(range(len(scene.objects)))
        for o in scene.objects:
            assert o.colour in COLOURS and o.shape in SHAPES and o.direction in DIRECTIONS and o.speed in SPEEDS
        assert scene.background in BACKGROUNDS and scene.background_colour in BACKGROUND_COLOURS
        assert scene.pan in (None, *DIRECTIONS)


def test_every_value_is_drawn_in_train():
    scenes = _scenes(None, 400)
    objects = [o for s in scenes for o in s.objects]
    assert {o.colour for o in objects} == set(COLOURS) and {o.shape for o in objects} == set(SHAPES)
    assert {o.direction for o in objects} == set(DIRECTIONS) and {o.speed for o in objects} == set(SPEEDS)
    assert {s.background for s in scenes} == set(BACKGROUNDS) and {s.pan for s in scenes} == {None, *DIRECTIONS}
    assert {len(s.objects) for s in scenes} == {1, 2, 3}


@pytest.mark.parametrize("num_frames,aspect", [(17, 2.0), (9, 1.0), (21, 16 / 9)])
def test_paths_stay_in_frame_and_occlusion_is_bounded(num_frames, aspect):
    height = 64
    width = round(height * aspect)
    overlapping = 0
    for scene in _scenes(None, 60, num_frames=num_frames, aspect=aspect):
        for o in scene.objects:
            c, r = centres(o, num_frames, height, width), radius(o, height)
            assert (c[:, 0] - r >= 0).all() and (c[:, 0] + r <= width).all(), o
            assert (c[:, 1] - r >= 0).all() and (c[:, 1] + r <= height).all(), o
        labels = label_maps(scene.objects, num_frames, height, width)
        for i, o in enumerate(scene.objects):
            own = (label_maps((o,), num_frames, height, width) == 0).sum(axis=(1, 2))
            shown = (labels == i).sum(axis=(1, 2))
            overlapping += bool((shown < own).any())
            # The sampler checks at a coarser raster: allow a little slack at this one.
            assert ((shown / own) >= MIN_VISIBLE - 0.1).mean() >= MIN_VISIBLE_FRAMES - 0.1, scene
    assert overlapping > 0  # occlusions happen


def test_heldout_combinations_never_in_train_and_in_every_heldout_scene():
    assert 8 <= len(HELDOUT_COMBINATIONS) <= 16
    assert {c for c, _, _ in HELDOUT_COMBINATIONS} == set(COLOURS)  # each colour keeps most combinations in train
    train = {o.combination for s in _scenes(None, 500) for o in s.objects}
    assert not train & HELDOUT_COMBINATIONS
    heldout = _scenes(None, 200, "heldout")
    assert all(any(o.combination in HELDOUT_COMBINATIONS for o in s.objects) for s in heldout)
    assert {o.combination for s in heldout for o in s.objects} >= HELDOUT_COMBINATIONS


def test_scene_survives_a_dict_round_trip():
    for scene in _scenes(None, 20):
        assert SceneSpec.from_dict(scene.to_dict()) == scene


def test_bad_arguments_are_named():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="split must be one of"):
        sample_scene(rng, "test")
    with pytest.raises(ValueError, match="num_frames=200 is too long"):
        sample_scene(rng, num_frames=200)
