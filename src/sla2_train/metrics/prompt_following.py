"""The testbed's weight-free semantic metric as evaluation metrics (docs/testbed.md).

prompt_following: the fraction of the prompt's objects the video shows with the stated colour, shape and
direction (sla2_train.testbed.semantic). prompt_following_chance: the same video scored against another prompt
of the evaluated set (the next one, cyclically), i.e. what a video unrelated to its prompt scores: the chance
level the first number is read against. prompt_following_<attribute> (present, shape, direction, speed): the
fraction of the prompt's objects right on that attribute alone, which says what a model that misses has not
learned yet. All are meaningful only for prompts in the testbed's caption grammar.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from sla2_train.evaluation.prompts import load_prompts

from .video_metrics import VideoMetric


class _LastSegmentation:
    """The colour labels of the video scored last. The evaluation scores one video with every metric in turn, and
    segmenting it, not reading the prompt, is the costly part: prompt_following, its chance level and the
    attribute fractions share one segmentation. Keyed by the tensor itself (a weak reference) and its version
    counter, so another video or an in-place change segments again."""

    def __init__(self):
        self._video, self._version, self._labels = None, None, None

    def __call__(self, video: torch.Tensor) -> np.ndarray:
        from sla2_train.testbed.semantic import as_uint8_video, colour_labels

        if self._video is None or self._video() is not video or self._version != video._version:
            self._labels = colour_labels(as_uint8_video(video.cpu().numpy()))
            self._video, self._version = weakref.ref(video), video._version
        return self._labels


_segmentation = _LastSegmentation()


def _results(video: torch.Tensor, prompt: str) -> list:
    from sla2_train.testbed.captions import parse_caption
    from sla2_train.testbed.semantic import score_labels

    return score_labels(_segmentation(video), parse_caption(prompt))


def _score(video: torch.Tensor, prompt: str, attribute: str = "correct") -> float:
    from sla2_train.testbed.semantic import fraction_right

    return fraction_right(_results(video, prompt), attribute)


class PromptAttribute(VideoMetric):
    """The fraction of the prompt's objects right on one attribute (0 for a prompt that claims no object)."""

    def __init__(self, attribute: str):
        from sla2_train.testbed.semantic import ATTRIBUTES

        if attribute not in ATTRIBUTES:
            raise ValueError(f"prompt_following attribute: {attribute!r} is not one of {list(ATTRIBUTES)}")
        self.attribute, self.name = attribute, f"prompt_following_{attribute}"

    def score(self, video, prompt, reference=None):
        return _score(video, prompt, self.attribute)


class PromptFollowing(VideoMetric):
    name = "prompt_following"

    def score(self, video, prompt, reference=None):
        return _score(video, prompt)

    def details(self, video, prompt):
        """Per captioned object: what was claimed and what was seen (which objects a model loses, not only how
        many)."""
        return [{"colour": r.claim.colour, "shape": r.claim.shape, "direction": r.claim.direction,
                 "speed": r.claim.speed, "present": r.present, "shape_right": r.shape,
                 "direction_right": r.direction, "shape_seen": r.shape_seen, "direction_seen": r.direction_seen,
                 "fill_ratio": r.fill_ratio, "displacement": r.displacement} for r in _results(video, prompt)]


class PromptFollowingChance(VideoMetric):
    name = "prompt_following_chance"

    def __init__(self, prompts: str):
        self.prompts = load_prompts(prompts, key="eval.metrics.prompt_following_chance.prompts")
        if len(self.prompts) < 2:
            raise ValueError("prompt_following_chance needs a prompt set of at least 2 prompts")

    def score(self, video, prompt, reference=None):
        i = self.prompts.index(prompt) if prompt in self.prompts else -1
        return _score(video, self.prompts[(i + 1) % len(self.prompts)])
