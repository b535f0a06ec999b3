"""Captions that state every object of a scene, and their inverse.

Grammar (lower case words separated by single spaces, no punctuation):

    caption := object ("and" object)* "over" article BGCOLOUR TEXTURE "background" "while the camera" camera
    object  := article COLOUR SHAPE "moves" DIRECTION SPEED
    camera  := "pans" DIRECTION | "stays still"
    article := "a" | "an" (before a vowel)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .scenes import BACKGROUND_COLOURS, COLOURS, DIRECTIONS, SHAPES, SceneSpec

SPEED_WORDS = {"slow": "slowly", "fast": "quickly"}
TEXTURE_WORDS = {"stripes": "striped", "checker": "checkered", "noise": "mottled", "gradient": "gradient"}
_GLUE = ("a", "an", "moves", "and", "over", "background", "while", "the", "camera", "pans", "stays", "still")
# Every word a caption can contain (for a word-level tokenizer).
VOCABULARY = tuple(sorted({*_GLUE, *COLOURS, *SHAPES, *DIRECTIONS, *SPEED_WORDS.values(), *BACKGROUND_COLOURS,
                           *TEXTURE_WORDS.values()}))


@dataclass(frozen=True)
class ObjectClaim:
    colour: str
    shape: str
    direction: str | None     # None: the caption names no direction for this object
    speed: str | None = None  # "slow" / "fast", None when not stated


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


STILL = "stays still"  # the camera phrase of a scene without a pan


def caption(scene: SceneSpec) -> str:
    """e.g. "a red circle moves left quickly and an orange square moves up slowly over a grey striped background
    while the camera pans right"."""
    objects = " and ".join(f"{_article(o.colour)} {o.colour} {o.shape} moves {o.direction} {SPEED_WORDS[o.speed]}"
                           for o in scene.objects)
    camera = f"pans {scene.pan}" if scene.pan else STILL
    bg = f"{_article(scene.background_colour)} {scene.background_colour} {TEXTURE_WORDS[scene.background]} background"
    return f"{objects} over {bg} while the camera {camera}"


_SPEED_OF = {w: s for s, w in SPEED_WORDS.items()}
_END = {"over", "background", "camera", "while"}  # after these words no object is described


def parse_caption(text: str) -> list[ObjectClaim]:
    """The objects a caption claims, in order: each "COLOUR SHAPE" pair with the first direction and speed word
    that follow it before the next pair. Case, punctuation and extra words are ignored; unknown text gives []."""
    words = re.findall(r"[a-z]+", text.lower())
    claims: list[ObjectClaim] = []
    current: dict | None = None
    for i, word in enumerate(words):
        if word in COLOURS and i + 1 < len(words) and words[i + 1] in SHAPES:
            if current:
                claims.append(ObjectClaim(**current))
            current = {"colour": word, "shape": words[i + 1], "direction": None, "speed": None}
        elif word in _END:
            if current:
                claims.append(ObjectClaim(**current))
            current = None
        elif current is not None:
            if word in DIRECTIONS and current["direction"] is None:
                current["direction"] = word
            elif word in _SPEED_OF and current["speed"] is None:
                current["speed"] = _SPEED_OF[word]
    if current:
        claims.append(ObjectClaim(**current))
    return claims


def parse_camera(text: str) -> str | None:
    """The caption's camera phrase ("stays still", "pans DIRECTION"), None where it states none."""
    words = re.findall(r"[a-z]+", text.lower())
    if "camera" not in words:
        return None
    after = words[words.index("camera") + 1:][:2]
    if " ".join(after) == STILL:
        return STILL
    return f"pans {after[1]}" if len(after) == 2 and after[0] == "pans" and after[1] in DIRECTIONS else None
