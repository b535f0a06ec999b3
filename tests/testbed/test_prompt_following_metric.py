"""The testbed's prompt-following metrics as evaluation metrics: a rendered video scores 1 against its own
caption and its chance twin scores it against another prompt of the set."""

import numpy as np
import torch

from sla2_train.metrics.prompt_following import PromptFollowing, PromptFollowingChance
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
