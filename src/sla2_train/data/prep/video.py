"""Read a fixed-length clip at a fixed frame rate, resized and centre-cropped to the target size.

Video files are decoded with PyAV. A `.npy` file is a clip already decoded (uint8 [F, H, W, 3], frames at the
clip's fps): what a procedural renderer writes (the testbed's data), read without PyAV or a lossy codec.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


class VideoError(Exception):
    reason = "unreadable_video"


class UnreadableVideo(VideoError):
    reason = "unreadable_video"


class TooShort(VideoError):
    reason = "too_short"


@dataclass(frozen=True)
class ClipSpec:
    num_frames: int = 81   # Wan: 4k+1 frames → 1 + (n-1)/4 latent frames (81 → 21)
    fps: float = 16.0
    height: int = 480
    width: int = 832
    start_s: float = 0.0   # where the clip starts in the video

    def __post_init__(self):
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"clip.num_frames must be 4k+1 (the Wan VAE compresses time by 4), got {self.num_frames}")
        if self.height % 16 or self.width % 16 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"clip.height/width must be positive multiples of 16 (VAE ×8, patch ×2), got {self.height}x{self.width}")
        if self.fps <= 0 or self.start_s < 0:
            raise ValueError(f"clip.fps must be > 0 and clip.start_s >= 0, got {self.fps}, {self.start_s}")


def _scaled_size(w0: int, h0: int, spec: ClipSpec) -> tuple[int, int]:
    """Smallest size ≥ target in both dimensions with the source aspect ratio (the crop removes the rest)."""
    scale = max(spec.width / w0, spec.height / h0)
    return max(spec.width, round(w0 * scale)), max(spec.height, round(h0 * scale))


def _centre_crop(sw: int, sh: int, spec: ClipSpec) -> tuple[slice, slice]:
    """(rows, columns) of the target-size centre of a frame scaled to sw × sh."""
    top, left = (sh - spec.height) // 2, (sw - spec.width) // 2
    return slice(top, top + spec.height), slice(left, left + spec.width)


def _to_rgb(frame, spec: ClipSpec) -> np.ndarray:
    sw, sh = _scaled_size(frame.width, frame.height, spec)
    # AREA for downscaling (no aliasing from fine texture), BICUBIC when upscaling; frame arrays do the same.
    interp = "AREA" if sw <= frame.width else "BICUBIC"
    img = frame.reformat(width=sw, height=sh, format="rgb24", interpolation=interp).to_ndarray()
    rows, cols = _centre_crop(sw, sh, spec)
    return img[rows, cols]


def load_clip(path: str, spec: ClipSpec) -> torch.Tensor:
    """uint8 [num_frames, height, width, 3]; frame i shows the video at start_s + i / fps (nearest earlier frame)."""
    if str(path).lower().endswith(".npy"):
        return _load_array_clip(path, spec)
    return _decode_clip(path, spec)


def _load_array_clip(path: str, spec: ClipSpec) -> torch.Tensor:
    try:
        frames = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exn:
        raise UnreadableVideo(f"cannot read {path}: {type(exn).__name__}: {exn}") from None
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise UnreadableVideo(f"{path}: a frame array must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    first = round(spec.start_s * spec.fps)
    if frames.shape[0] < first + spec.num_frames:
        raise TooShort(f"{path} is too short: {spec.num_frames} frames from frame {first} need "
                       f"{first + spec.num_frames}; it has {frames.shape[0]}")
    clip = torch.from_numpy(np.array(frames[first : first + spec.num_frames]))  # a copy: the map is read-only
    h0, w0 = clip.shape[1:3]
    if (h0, w0) == (spec.height, spec.width):
        return clip
    sw, sh = _scaled_size(w0, h0, spec)
    x = clip.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(sh, sw), mode="area" if sw <= w0 else "bicubic")
    rows, cols = _centre_crop(sw, sh, spec)
    x = x[:, :, rows, cols]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _decode_clip(path: str, spec: ClipSpec) -> torch.Tensor:
    import av  # only here: frame arrays need no PyAV

    targets = [spec.start_s + i / spec.fps for i in range(spec.num_frames)]
    out: list[np.ndarray] = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise UnreadableVideo(f"no video stream in {path}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or spec.fps)
            # Containers round frame times to their time base (Matroska: 1 ms, so 1/16 s is stored as 0.063 s):
            # a frame up to one time-base step late is still the frame of that time.
            tol = max(1e-6, min(float(stream.time_base or 0), 0.25 / rate))
            origin, prev, prev_img, t_prev, count = None, None, None, 0.0, 0
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else count / rate
                count += 1
                origin = t if origin is None else origin
                t -= origin  # time from the first frame: some files start at a positive timestamp
                while prev is not None and len(out) < len(targets) and targets[len(out)] < t - tol:
                    prev_img = _to_rgb(prev, spec) if prev_img is None else prev_img
                    out.append(prev_img)
                if len(out) == len(targets):
                    break
                prev, prev_img, t_prev = frame, None, t
            # Targets after the last frame: it is shown for one frame period.
            while prev is not None and len(out) < len(targets) and targets[len(out)] < t_prev + 1 / rate - tol:
                prev_img = _to_rgb(prev, spec) if prev_img is None else prev_img
                out.append(prev_img)
    except VideoError:
        raise
    except (av.FFmpegError, OSError, EOFError) as exn:
        raise UnreadableVideo(f"cannot decode {path}: {type(exn).__name__}: {exn}") from None
    if len(out) < len(targets):
        need = spec.start_s + (spec.num_frames - 1) / spec.fps
        have = f"lasts {t_prev + 1 / rate:.2f}s" if prev is not None else "has no frames"
        raise TooShort(f"{path} is too short: {spec.num_frames} frames at {spec.fps:g} fps from {spec.start_s:g}s "
                       f"need it to last longer than {need:.2f}s; it {have}")
    return torch.from_numpy(np.stack(out))
