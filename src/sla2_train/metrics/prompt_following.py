"""The testbed's weight-free semantic metric as evaluation metrics (docs/testbed.md).

prompt_following: the fraction of the prompt's objects the video shows with the stated colour, shape and
direction (sla2_train.testbed.semantic). prompt_following_chance: the same video scored against another prompt
of the evaluated set (the next one, cyclically), i.e. what a video unrelated to its prompt scores: the chance
level the first number is read against. prompt_following_<attribute> (present, shape, direction, speed): the
fraction of the prompt's objects right on that attribute alone, which says what a model that misses has not
learned yet. All are meaningful only for prompts in the testbed's caption grammar.
"""

from __future__ import annotations

from sla2_train.evaluation.prompts import load_prompts

from .video_metrics import VideoMetric


def _score(video, prompt: str) -> float:
    from sla2_train.testbed.semantic import score_video

    return score_video(video.cpu().numpy(), prompt)[1]


class PromptAttribute(VideoMetric):
    """The fraction of the prompt's objects right on one attribute (0 for a prompt that claims no object)."""

    def __init__(self, attribute: str):
        from sla2_train.testbed.semantic import ATTRIBUTES

        if attribute not in ATTRIBUTES:
            raise ValueError(f"prompt_following attribute: {attribute!r} is not one of {list(ATTRIBUTES)}")
        self.attribute, self.name = attribute, f"prompt_following_{attribute}"

    def score(self, video, prompt, reference=None):
        from sla2_train.testbed.semantic import score_video

        results = score_video(video.cpu().numpy(), prompt)[0]
        return sum(getattr(r, self.attribute) for r in results) / len(results) if results else 0.0


class PromptFollowing(VideoMetric):
    name = "prompt_following"

    def score(self, video, prompt, reference=None):
        return _score(video, prompt)


class PromptFollowingChance(VideoMetric):
    name = "prompt_following_chance"

    def __init__(self, prompts: str):
        self.prompts = load_prompts(prompts, key="eval.metrics.prompt_following_chance.prompts")
        if len(self.prompts) < 2:
            raise ValueError("prompt_following_chance needs a prompt set of at least 2 prompts")

    def score(self, video, prompt, reference=None):
        i = self.prompts.index(prompt) if prompt in self.prompts else -1
        return _score(video, self.prompts[(i + 1) % len(self.prompts)])
