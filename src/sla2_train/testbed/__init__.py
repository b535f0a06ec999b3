"""A procedural text-to-video testbed: scenes of coloured shapes, their renderer, captions and a semantic metric."""

from .captions import VOCABULARY, ObjectClaim, caption, parse_caption
from .dataset import DatasetSpec, read_scenes, write_dataset
from .render import render
from .scenes import (BACKGROUND_COLOURS, BACKGROUNDS, COLOURS, DIRECTIONS, HELDOUT_COMBINATIONS, SHAPES, SPEEDS,
                     SPLITS, ObjectSpec, SceneSpec, sample_scene)
from .semantic import ObjectResult, as_uint8_video, prompt_following, score_video

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_COLOURS",
    "COLOURS",
    "DatasetSpec",
    "DIRECTIONS",
    "HELDOUT_COMBINATIONS",
    "ObjectClaim",
    "ObjectResult",
    "ObjectSpec",
    "SHAPES",
    "SPEEDS",
    "SPLITS",
    "SceneSpec",
    "VOCABULARY",
    "as_uint8_video",
    "caption",
    "parse_caption",
    "prompt_following",
    "read_scenes",
    "render",
    "sample_scene",
    "score_video",
    "write_dataset",
]
