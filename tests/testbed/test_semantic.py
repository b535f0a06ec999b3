"""The semantic metric: near 1 on rendered ground truth, near chance with shuffled captions, and it catches
a wrong shape, a wrong direction, a missing object and a still one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sla2_train.testbed import caption, prompt_following, render, sample_scene, score_video
from sla2_train.testbed.semantic import derangement


def _set(rng, split, n, num_frames=16, height=128, width=256):
    scenes = [sample_scene(rng, split, num_frames, width / height) for _ in range(n)]
    return scenes, [render(s, num_frames, height, width) for s in scenes], [caption(s) for s in scenes]


# (split, video shape, videos, least accuracy). Fresh scenes each run, so the bounds sit well below the means:
# over 25 draws of 40 videos, 0.992 (least 0.961) at 16×128×256; over 150 draws of 80 videos, 0.982 (least
# 0.948) at the small 9×96×160 (CPU, 2026-12-04). A draw of 40 small videos once scored 0.949 under a 0.95 bound.
@pytest.mark.parametrize("split,shape,n,least", [("train", (16, 128, 256), 40, 0.95),
                                                 ("heldout", (16, 128, 256), 40, 0.95),
                                                 ("train", (9, 96, 160), 80, 0.93)])
def test_ground_truth_scores_near_one_and_shuffled_captions_near_chance(split, shape, n, least):
    _, videos, captions = _set(np.random.default_rng(), split, n, *shape)
    r = prompt_following(videos, captions)
    assert r["num_videos"] == n and r["num_objects"] >= n
    assert r["accuracy"] >= least and r["present"] >= 0.98 and r["direction"] >= 0.95 and r["speed"] >= 0.9, r
    assert r["chance"] <= 0.25 and r["accuracy"] - r["chance"] >= 0.7, r
    assert r["chance_video_accuracy"] <= r["chance"] + 0.05


def _wrong(scene, **change):
    o = scene.objects[0]
    return dataclasses.replace(scene, objects=(dataclasses.replace(o, **change), *scene.objects[1:]))


def _single_object_scenes(rng, n):
    out = []
    while len(out) < n:
        s = sample_scene(rng)
        if len(s.objects) == 1:
            out.append(s)
    return out


def test_each_attribute_can_fail():
    rng = np.random.default_rng()
    flips = {"left": "right", "right": "left", "up": "down", "down": "up"}
    for scene in _single_object_scenes(rng, 8):
        o, text = scene.objects[0], caption(scene)
        other_shape = {"circle": "triangle", "square": "triangle", "triangle": "square"}[o.shape]
        # Drawn with another shape: only the shape fails.
        (res,), score = score_video(render(_wrong(scene, shape=other_shape)), text)
        assert res.present and res.direction and not res.shape and score == 0.0, res
        # Moving the opposite way from the same place stays in frame only sometimes: flip the whole track.
        flipped = _wrong(scene, direction=flips[o.direction])
        video = render(scene)[::-1]  # time reversed: the same shape moving the other way
        (res,), _ = score_video(video, caption(flipped))
        assert res.present and res.shape and res.direction
        (res,), _ = score_video(video, text)
        assert not res.direction and res.direction_seen == flips[o.direction]
        # Not drawn at all (the same frames with the object's colour named for an absent one).
        absent = "cyan" if o.colour != "cyan" else "red"
        (res,), score = score_video(render(scene), caption(_wrong(scene, colour=absent)))
        assert not res.present and score == 0.0
        # Standing still: the first frame repeated.
        (res,), _ = score_video(np.repeat(render(scene)[:1], 16, axis=0), text)
        assert res.present and res.shape and not res.direction and res.direction_seen is None


def test_float_inputs_match_uint8_and_bad_inputs_are_named():
    scenes, videos, captions = _set(np.random.default_rng(), "train", 3)
    ref = prompt_following(videos, captions)
    unit = [torch.from_numpy(v).float() / 255 for v in videos]
    assert prompt_following(unit, captions, value_range=(0, 1)) == ref
    assert prompt_following([v * 2 - 1 for v in unit], captions, value_range=(-1, 1)) == ref
    assert prompt_following([torch.from_numpy(v) for v in videos], captions) == ref
    with pytest.raises(ValueError, match=r"value_range must be \(0, 1\) or \(-1, 1\)"):
        score_video(unit[0], captions[0])
    with pytest.raises(ValueError, match="outside value_range=\\(0, 1\\)"):
        score_video(unit[0] * 2 - 1, captions[0], value_range=(0, 1))
    with pytest.raises(ValueError, match=r"\[frames, height, width, 3\] \(channels last\), got shape \(16, 3, 128, 2"):
        score_video(unit[0].permute(0, 3, 1, 2), captions[0], value_range=(0, 1))
    with pytest.raises(ValueError, match="got 3 videos for 2 captions"):
        prompt_following(videos, captions[:2])


@pytest.mark.parametrize("n", [2, 3, 7, 40])
def test_derangement_moves_every_caption_and_is_fixed(n):
    d = derangement(n)
    assert sorted(d) == list(range(n)) and (d != np.arange(n)).all()
    assert (derangement(n) == d).all()


def test_blurred_noisy_videos_still_score_high():
    """What a generator gets wrong at the pixel level (soft edges, noise) must not read as a wrong prompt."""
    rng = np.random.default_rng()
    scenes, videos, captions = _set(rng, "train", 30)
    soft = []
    for v in videos:
        x = v.astype(np.float32)
        for axis in (1, 2):  # a 3-tap box blur along each image axis
            x = (np.roll(x, 1, axis) + x + np.roll(x, -1, axis)) / 3
        soft.append(np.clip(np.rint(x + rng.normal(0, 8, x.shape)), 0, 255).astype(np.uint8))
    r = prompt_following(soft, captions)
    assert r["accuracy"] >= 0.9 and r["present"] >= 0.98 and r["direction"] >= 0.95, r
