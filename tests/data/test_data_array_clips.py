"""Frame arrays (.npy, uint8 [F, H, W, 3]) as clips: read exactly, cropped like videos, found by discover."""

from __future__ import annotations

import numpy as np
import pytest

from sla2_train.data.prep import ClipSpec, TooShort, UnreadableVideo, load_clip
from sla2_train.data.prep.sources import discover


def test_frames_are_read_exactly_from_start_s(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (12, 16, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "c.npy", frames)
    clip = load_clip(str(tmp_path / "c.npy"), ClipSpec(num_frames=9, fps=8, height=16, width=32, start_s=0.25))
    assert clip.dtype.is_floating_point is False
    assert np.array_equal(clip.numpy(), frames[2:11])  # start 0.25 s at 8 fps = frame 2


def test_other_sizes_are_scaled_and_centre_cropped(tmp_path):
    frames = np.zeros((5, 32, 96, 3), np.uint8)  # 3:1 → 2:1: scaled to 32×96 (already), cropped to 32×64
    frames[:, :, :16, 0] = 255   # red only in the 16 columns the crop removes
    frames[:, :, 40:56, 1] = 200  # a green band in the middle
    clip = load_clip(str(_save(tmp_path, frames)), ClipSpec(num_frames=5, fps=16, height=16, width=32))
    assert clip.shape == (5, 16, 32, 3)
    assert clip[..., 0].max() == 0                       # the red edge is cropped, not squashed in
    assert clip[:, :, 12:20, 1].float().mean() == pytest.approx(200, abs=1)


def _save(tmp_path, frames):
    np.save(tmp_path / "c.npy", frames)
    return tmp_path / "c.npy"


@pytest.mark.parametrize("array,match", [
    (np.zeros((5, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((5, 8, 8), np.uint8), r"\[F, H, W, 3\]"),
])
def test_wrong_arrays_are_unreadable(tmp_path, array, match):
    with pytest.raises(UnreadableVideo, match=match):
        load_clip(str(_save(tmp_path, array)), ClipSpec(num_frames=5, fps=16, height=16, width=16))


def test_short_and_broken_arrays(tmp_path):
    with pytest.raises(TooShort, match="has 3"):
        load_clip(str(_save(tmp_path, np.zeros((3, 16, 16, 3), np.uint8))), ClipSpec(num_frames=5, height=16, width=16))
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(UnreadableVideo, match="cannot read"):
        load_clip(str(tmp_path / "bad.npy"), ClipSpec(num_frames=5, height=16, width=16))
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnreadableVideo):  # never unpickled
        load_clip(str(pickled), ClipSpec(num_frames=5, height=16, width=16))


def test_discover_finds_frame_arrays_with_sidecar_captions(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 16, 16, 3), np.uint8))
    (tmp_path / "a.txt").write_text("a red circle moves left slowly")
    (items,) = discover(tmp_path)
    assert items.relpath == "a.npy" and items.caption == "a red circle moves left slowly"
