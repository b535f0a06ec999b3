"""The testbed's prompt-following metrics as evaluation metrics: a rendered video scores 1 against its own
caption, its chance twin scores it against another prompt of the set, and the per-attribute fractions count
what a wrong video gets right."""

import numpy as np
import pytest
import torch

from sla2_train.metrics.prompt_following import PromptAttribute, PromptFollowing, PromptFollowingChance
from sla2_train.testbed import caption, render, sample_scene


def test_rendered_video_scores_its_caption_and_chance_scores_another(tmp_path):
    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng, "train") for _ in range(6)]
    prompts = [caption(s) for s in scenes]
    (tmp_path / "p.txt").write_text("\n".join(prompts))
    own, chance = PromptFollowing(), PromptFollowingChance(str(tmp_path / "p.txt"))
    own_scores, chance_scores = [], []
    for scene, prompt in zip(scenes, prompts):
        video = torch.from_numpy(render(scene, 17, 128, 256))
        own_scores.append(own.score(video, prompt))
        chance_scores.append(chance.score(video, prompt))
        assert chance.score(video, prompt) == own.score(video, prompts[(prompts.index(prompt) + 1) % 6])
    assert np.mean(own_scores) >= 0.9
    assert np.mean(chance_scores) < np.mean(own_scores) - 0.4


def test_attribute_metrics_count_what_a_wrong_video_gets_right():
    """A still video of the right scene: every object present and of the right shape, none moving the stated
    way; a video of the scene flipped left-right: directions wrong exactly for the horizontal movers."""
    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng, "train") for _ in range(4)]
    metrics = {a: PromptAttribute(a) for a in ("present", "shape", "direction")}
    for scene in scenes:
        prompt, video = caption(scene), render(scene, 17, 128, 256)
        still = torch.from_numpy(np.repeat(video[:1], 17, axis=0))
        assert metrics["direction"].score(still, prompt) == 0.0
        assert metrics["present"].score(still, prompt) >= 0.5
        flipped = torch.from_numpy(np.ascontiguousarray(video[:, :, ::-1]))
        horizontal = [o.direction in ("left", "right") for o in scene.objects]
        assert metrics["direction"].score(flipped, prompt) == 1.0 - sum(horizontal) / len(horizontal)
        assert metrics["present"].score(torch.from_numpy(video), prompt) == 1.0


def test_an_unknown_attribute_is_refused():
    with pytest.raises(ValueError, match="'colour' is not one of"):
        PromptAttribute("colour")


def test_the_metrics_of_one_video_share_one_segmentation(tmp_path, monkeypatch):
    """prompt_following, its chance level and the attribute fractions segment a video once, score what
    semantic.score_video scores, and segment again for another video or after an in-place change."""
    from sla2_train.evaluation.metric_suite import score_video as score_all
    from sla2_train.testbed import semantic

    calls = []
    real = semantic.colour_labels
    monkeypatch.setattr(semantic, "colour_labels", lambda v: calls.append(1) or real(v))
    rng = np.random.default_rng(11)
    scenes = [sample_scene(rng, "train") for _ in range(2)]
    prompts = [caption(s) for s in scenes]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    metrics = [PromptFollowing(), PromptFollowingChance(str(tmp_path / "p.txt")),
               *(PromptAttribute(a) for a in ("present", "shape", "direction"))]
    videos = [torch.from_numpy(render(s, 17, 64, 128)) for s in scenes]
    for i, video in enumerate(videos):
        calls.clear()
        got = score_all(metrics, video, prompts[i], None)
        assert len(calls) == 1
        results, score = semantic.score_video(video.numpy(), prompts[i])
        assert got["prompt_following"] == score
        assert got["prompt_following_chance"] == semantic.score_video(video.numpy(), prompts[1 - i])[1]
        for a in ("present", "shape", "direction"):
            assert got[f"prompt_following_{a}"] == np.mean([getattr(r, a) for r in results])
    calls.clear()
    videos[1][:, :, :] = 0  # in place: the same tensor, another picture
    assert PromptFollowing().score(videos[1], prompts[1]) == 0.0 and len(calls) == 1


def test_details_name_each_object_and_what_was_seen():
    """The per-object details kept beside the score: one entry per captioned object, in caption order, whose
    right-on-all count is the score; a flipped video shows the horizontal movers going the other way."""
    import json

    from sla2_train.evaluation.metric_suite import video_details

    rng = np.random.default_rng(7)
    metric = PromptFollowing()
    for scene in [sample_scene(rng, "train") for _ in range(3)]:
        prompt, video = caption(scene), render(scene, 17, 128, 256)
        flipped = torch.from_numpy(np.ascontiguousarray(video[:, :, ::-1]))
        details = video_details([metric, PromptAttribute("present")], flipped, prompt)
        assert list(details) == ["prompt_following"]  # the attribute fractions keep none of their own
        objects = details["prompt_following"]
        json.dumps(objects)
        assert [(o["colour"], o["shape"], o["direction"]) for o in objects] == [
            (c.colour, c.shape, c.direction) for c in scene.objects]
        right = [o["present"] and o["shape_right"] and o["direction_right"] for o in objects]
        assert metric.score(flipped, prompt) == pytest.approx(sum(right) / len(right))
        for o, claim in zip(objects, scene.objects):
            if o["present"] and claim.direction in ("left", "right"):
                assert o["direction_seen"] == {"left": "right", "right": "left"}[claim.direction]
