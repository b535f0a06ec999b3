"""A procedural text-to-video testbed: scenes of coloured shapes, their renderer, captions and a semantic metric."""

from .captions import VOCABULARY, ObjectClaim, caption, parse_caption
from .render import render
from .scenes import (BACKGROUND_COLOURS, BACKGROUNDS, COLOURS, DIRECTIONS, HELDOUT_COMBINATIONS, SHAPES, SPEEDS,
                     SPLITS, ObjectSpec, SceneSpec, sample_scene)

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_COLOURS",
    "COLOURS",
    "DIRECTIONS",
    "HELDOUT_COMBINATIONS",
    "ObjectClaim",
    "ObjectSpec",
    "SHAPES",
    "SPEEDS",
    "SPLITS",
    "SceneSpec",
    "VOCABULARY",
    "caption",
    "parse_caption",
    "render",
    "sample_scene",
]
