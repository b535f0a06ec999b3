"""Video decoding: frames sampled at the target fps, resized and centre-cropped; bad files raise clear errors."""

from __future__ import annotations

import av
import numpy as np
import pytest

from sla2_train.data.prep import ClipSpec, TooShort, UnreadableVideo, load_clip


def _indexed_video(path, num_frames, fps, width, height, step=6):
    """Frame i: grey level step*i (luma survives yuv420 exactly enough); red stripe far left, blue far right."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qscale": "1"}
        for i in range(num_frames):
            img = np.zeros((height, width, 3), np.uint8)
            img[:, :, :] = step * i
            img[:, : width // 8, 0] = 255
            img[:, -width // 8 :, 2] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_frames_are_resampled_in_time_and_centre_cropped(tmp_path):
    src_fps, frames = 24, 40
    _indexed_video(tmp_path / "v.mp4", frames, src_fps, width=128, height=64)  # 2:1 source, 3:2 target
    spec = ClipSpec(num_frames=9, fps=8, height=32, width=48)
    clip = load_clip(str(tmp_path / "v.mp4"), spec)
    assert clip.shape == (9, 32, 48, 3) and clip.dtype.is_floating_point is False
    grey = clip[:, 8:24, 16:32].float().mean(dim=(1, 2, 3))
    expected = 6 * (np.arange(9) * src_fps // 8)  # target i shows source frame 3i (neighbours differ by 6)
    assert np.abs(grey.numpy() - expected).max() < 2.5, grey
    # Scaled to 64x32 then cropped 8 px each side: the 16-px source stripes (8 px scaled) are gone, not squashed in.
    red_minus_green = (clip[..., 0].float() - clip[..., 1].float()).abs().mean()
    blue_minus_green = (clip[..., 2].float() - clip[..., 1].float()).abs().mean()
    assert red_minus_green < 8 and blue_minus_green < 8


def test_start_offset_and_low_fps_source(tmp_path):
    _indexed_video(tmp_path / "v.mp4", 12, 4, width=48, height=32, step=20)  # 3 s at 4 fps
    clip = load_clip(str(tmp_path / "v.mp4"), ClipSpec(num_frames=5, fps=8, height=32, width=48, start_s=1.0))
    grey = clip[:, 8:24, 16:32].float().mean(dim=(1, 2, 3)).numpy()
    expected = 20 * np.floor((1.0 + np.arange(5) / 8) * 4)  # source frames 4,4,5,5,6: repeated, not invented
    assert np.abs(grey - expected).max() < 7, grey


def test_bad_videos_raise_named_errors(tmp_path):
    _indexed_video(tmp_path / "short.mp4", 6, 8, 48, 32)
    with pytest.raises(TooShort, match="too short: 9 frames at 8 fps from 0s need it to last longer than 1.00s; it lasts 0.75s"):
        load_clip(str(tmp_path / "short.mp4"), ClipSpec(num_frames=9, fps=8, height=32, width=48))
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng().integers(0, 255, 5000, dtype=np.uint8).tobytes())
    # Random bytes are sometimes probed as a container without a video stream: either is the one named error.
    with pytest.raises(UnreadableVideo, match="cannot decode|no video stream"):
        load_clip(str(tmp_path / "junk.mp4"), ClipSpec(num_frames=9, fps=8, height=32, width=48))
    with pytest.raises(UnreadableVideo):
        load_clip(str(tmp_path / "missing.mp4"), ClipSpec(num_frames=9, fps=8, height=32, width=48))
    with pytest.raises(ValueError, match="4k\\+1"):
        ClipSpec(num_frames=8)
    with pytest.raises(ValueError, match="multiples of 16"):
        ClipSpec(height=470)


@pytest.mark.parametrize("suffix,codec,pix_fmt", [(".mkv", "ffv1", "bgr0"), (".mp4", "libx264rgb", "rgb24")])
def test_lossless_files_decode_frame_exactly_whatever_the_time_base(tmp_path, suffix, codec, pix_fmt):
    # Matroska keeps times in milliseconds: frame 1 of a 16 fps file is at 0.063 s, not 0.0625 s.
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (9, 16, 32, 3), dtype=np.uint8)
    path = str(tmp_path / f"v{suffix}")
    try:
        with av.open(path, "w") as container:
            stream = container.add_stream(codec, rate=16)
            stream.width, stream.height, stream.pix_fmt = 32, 16, pix_fmt
            if codec == "libx264rgb":
                stream.options = {"qp": "0"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    except (av.FFmpegError, ValueError) as exn:
        pytest.skip(f"this PyAV build cannot write {codec}: {exn}")
    clip = load_clip(path, ClipSpec(num_frames=9, fps=16, height=16, width=32))
    assert np.array_equal(clip.numpy(), frames)
