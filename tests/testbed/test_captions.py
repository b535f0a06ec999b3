"""Captions state every object; parse_caption inverts them and tolerates case, punctuation and extra words."""

from __future__ import annotations

import numpy as np

from sla2_train.testbed import BACKGROUNDS, SPEEDS, VOCABULARY, ObjectClaim, caption, parse_caption, sample_scene
from sla2_train.testbed.captions import SPEED_WORDS, TEXTURE_WORDS, parse_camera


def _claims(scene):
    return [ObjectClaim(o.colour, o.shape, o.direction, o.speed) for o in scene.objects]


def test_parse_inverts_caption_and_words_are_in_the_vocabulary():
    assert set(TEXTURE_WORDS) == set(BACKGROUNDS) and set(SPEED_WORDS) == set(SPEEDS)
    rng = np.random.default_rng()
    for split in ("train", "heldout"):
        for _ in range(100):
            scene = sample_scene(rng, split)
            text = caption(scene)
            assert parse_caption(text) == _claims(scene)
            assert set(text.split(" ")) <= set(VOCABULARY), text
            assert f"{TEXTURE_WORDS[scene.background]} background" in text
            assert parse_camera(text) == (f"pans {scene.pan}" if scene.pan else "stays still")
            for o in scene.objects:
                assert f"{o.colour} {o.shape} moves {o.direction} {SPEED_WORDS[o.speed]}" in text


def test_articles_agree_with_the_next_word():
    rng = np.random.default_rng()
    for _ in range(50):
        words = caption(sample_scene(rng)).split(" ")
        for article, word in zip(words, words[1:]):
            if article in ("a", "an"):
                assert article == ("an" if word[0] in "aeiou" else "a"), " ".join(words)


def test_parse_is_robust_to_free_text():
    text = "A RED circle, moving quickly to the left; and an orange square (drifting up) over a slate background."
    assert parse_caption(text) == [ObjectClaim("red", "circle", "left", "fast"), ObjectClaim("orange", "square", "up")]
    # A direction after "camera" belongs to the camera; a colour without a shape is no object.
    assert parse_caption("a blue triangle over a grey background while the camera pans left") == \
        [ObjectClaim("blue", "triangle", None)]
    assert parse_caption("a red sky, the camera pans right") == []
    assert parse_caption("") == []


def test_a_caption_without_a_camera_phrase_has_none():
    assert parse_camera("a red square moves up slowly") is None
    assert parse_camera("The Camera pans left.") == "pans left"
    assert parse_camera("the camera pans sideways") is None
