"""uint8 frames ↔ mp4 files (PyAV, H.264)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from sla2_train.models import ConfigError


def to_uint8(frames) -> torch.Tensor:
    """Pipeline output in [0, 1] (numpy or torch, [F, H, W, 3]) → uint8 tensor, rounded."""
    x = torch.as_tensor(np.asarray(frames, dtype=np.float32))
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def require_video_writer() -> None:
    """Fail before any sampling when the mp4 writer (PyAV, a dependency of the package) is missing: otherwise the
    run would stop at its first finished video."""
    try:
        import av  # noqa: F401
    except ImportError:
        raise ConfigError("eval.py writes every video as mp4 with PyAV, which is not installed: "
                          "pip install av") from None


def write_mp4(path: Path, video: torch.Tensor, fps: int, crf: int = 18) -> Path:
    """Write [F, H, W, 3] uint8 as H.264 (yuv420p needs even sides: odd ones are padded by one pixel)."""
    import av

    frames = video.numpy()
    h, w = frames.shape[1:3]
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_mp4(path: Path) -> torch.Tensor:
    import av

    with av.open(str(path)) as container:
        return torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))
