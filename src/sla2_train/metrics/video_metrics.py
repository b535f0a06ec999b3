"""The per-video metrics of the evaluation table, each with its VBench definition.

Every metric scores one uint8 video [F, H, W, 3] (with its prompt, and the dense video of the same prompt and
seed where it compares against it) and returns one float; a table row is the mean over videos. Metrics that
need a network are built by `load` from local weights named by a config key: an unset key raises
MissingWeights (the evaluation skips the metric with that line), a path that does not exist a ConfigError.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backbones import (
    LPIPS,
    ClipFeatures,
    DinoFeatures,
    load_aesthetic_head,
    load_raft,
    load_scripted,
    require_path,
)
from .backbones.preprocess import limit_long_side, to_float
from .image_quality import video_psnr, video_ssim
from .temporal import (
    frame_consistency,
    is_dynamic,
    motion_smoothness,
    sample_at_fps,
    temporal_flickering,
    top_flow_magnitude,
)


class VideoMetric:
    name = "metric"
    needs_reference = False  # True: compared with the dense video of the same prompt and seed
    higher_is_better = True

    def to(self, device) -> "VideoMetric":
        self.device = torch.device(device)
        for value in vars(self).values():
            if hasattr(value, "to") and not isinstance(value, torch.device):
                value.to(device)
        return self

    @property
    def _device(self) -> torch.device:
        return getattr(self, "device", torch.device("cpu"))

    def score(self, video: torch.Tensor, prompt: str, reference: torch.Tensor | None = None) -> float:
        raise NotImplementedError

    def details(self, video: torch.Tensor, prompt: str) -> object | None:
        """What the score was computed from, kept beside it in the per-video record (JSON-able); None: nothing."""
        return None


class TemporalFlickering(VideoMetric):
    name = "temporal_flickering"

    def score(self, video, prompt, reference=None):
        return temporal_flickering(video)


def _pixels(video: torch.Tensor, device) -> torch.Tensor:
    """uint8 [F, H, W, 3] → float [1, 3, F, H, W] in [0, 1] for the image-quality helpers."""
    return to_float(video).to(device).permute(1, 0, 2, 3)[None]


class PSNR(VideoMetric):
    """PSNR against the dense video in pixel space ([0, 1], data range 1)."""

    name = "psnr"
    needs_reference = True

    def score(self, video, prompt, reference=None):
        return video_psnr(_pixels(video, self._device), _pixels(reference, self._device), data_range=1.0)


class SSIM(VideoMetric):
    name = "ssim"
    needs_reference = True

    def score(self, video, prompt, reference=None):
        return video_ssim(_pixels(video, self._device), _pixels(reference, self._device), data_range=1.0)


class _FeatureConsistency(VideoMetric):
    """frame_consistency of per-frame features from `features.image`."""

    def __init__(self, features):
        self.features = features

    def score(self, video, prompt, reference=None):
        return frame_consistency(self.features.image(video))


class SubjectConsistency(_FeatureConsistency):
    """VBench subject consistency: DINO ViT-B/16 features."""

    name = "subject_consistency"

    @classmethod
    def load(cls, path, key: str = "backbones.dino"):
        return cls(DinoFeatures(require_path(path, key, "a local DINO ViT-B/16 folder (transformers ViTModel)")))


class BackgroundConsistency(_FeatureConsistency):
    """VBench background consistency: CLIP image features."""

    name = "background_consistency"

    @classmethod
    def load(cls, path, key: str = "backbones.clip"):
        return cls(ClipFeatures(require_path(path, key, "a local CLIP folder (transformers CLIPModel)")))


class AestheticQuality(VideoMetric):
    """VBench aesthetic quality: LAION head on L2-normalised CLIP ViT-L/14 embeddings, /10, frame mean."""

    name = "aesthetic_quality"

    def __init__(self, features, head):
        self.features, self.head = features, head

    @classmethod
    def load(cls, clip_path, head_path, clip_key: str = "backbones.clip_large",
             head_key: str = "backbones.aesthetic_head"):
        clip = require_path(clip_path, clip_key, "a local CLIP ViT-L/14 folder (transformers CLIPModel)")
        head = require_path(head_path, head_key, "the LAION aesthetic head weights (e.g. sa_0_4_vit_l_14_linear.pth)")
        return cls(ClipFeatures(clip), load_aesthetic_head(head, head_key))

    @torch.no_grad()
    def score(self, video, prompt, reference=None):
        emb = F.normalize(self.features.image(video), dim=-1)
        return float(self.head(emb.to(self.head[0].weight.dtype)).mean() / 10.0)


class ClipTextScore(VideoMetric):
    """cos(CLIP text, CLIP frame) averaged over frames: stands in for VBench's ViCLIP overall consistency."""

    name = "clip_text_score"

    def __init__(self, features):
        self.features = features

    @classmethod
    def load(cls, path, key: str = "backbones.clip"):
        return cls(ClipFeatures(require_path(path, key, "a local CLIP folder with its tokenizer"), with_text=True))

    def score(self, video, prompt, reference=None):
        text = F.normalize(self.features.text(prompt), dim=-1)
        return float((F.normalize(self.features.image(video), dim=-1) @ text).mean())


class ImagingQuality(VideoMetric):
    """VBench imaging quality: a no-reference IQA (0–100, e.g. MUSIQ-SPAQ) per frame, long side ≤ 512, /100."""

    name = "imaging_quality"

    def __init__(self, iqa, max_side: int = 512):
        self.iqa, self.max_side = iqa, max_side

    @classmethod
    def load(cls, path, key: str = "backbones.iqa", max_side: int = 512):
        what = "a TorchScript no-reference IQA (frames [N, 3, H, W] in [0, 1] → scores 0–100), e.g. MUSIQ"
        return cls(load_scripted(require_path(path, key, what), key), max_side)

    @torch.no_grad()
    def score(self, video, prompt, reference=None):
        scores = [self.iqa(limit_long_side(to_float(f[None]).to(self._device), self.max_side)).float().flatten()
                  for f in video]
        return float(torch.cat(scores).mean() / 100.0)


class MotionSmoothness(VideoMetric):
    """VBench motion smoothness with a pluggable interpolator (VBench uses AMT)."""

    name = "motion_smoothness"

    def __init__(self, interpolator):
        self.interpolator = interpolator

    @classmethod
    def load(cls, path, key: str = "backbones.interpolator"):
        what = "a TorchScript frame interpolator ((a, b) float [N, 3, H, W] in [0, 1] → middle frame), e.g. AMT"
        return cls(load_scripted(require_path(path, key, what), key))

    @torch.no_grad()
    def score(self, video, prompt, reference=None):
        return motion_smoothness(video, lambda a, b: self.interpolator(a.to(self._device), b.to(self._device)).cpu())


class DynamicDegree(VideoMetric):
    """VBench dynamic degree: 1 when the video moves (RAFT flow on frames sampled at ~8 fps), else 0."""

    name = "dynamic_degree"

    def __init__(self, flow, fps: float):
        self.flow, self.fps = flow, fps

    @classmethod
    def load(cls, path, fps: float, key: str = "backbones.raft"):
        return cls(load_raft(require_path(path, key, "torchvision raft_large weights (raft_large_C_T_SKHT_V2)"), key),
                   fps)

    @torch.no_grad()
    def score(self, video, prompt, reference=None):
        frames = to_float(sample_at_fps(video, self.fps)).to(self._device)
        scores = torch.cat([top_flow_magnitude(self.flow(frames[i:i + 1], frames[i + 1:i + 2]))
                            for i in range(frames.shape[0] - 1)])
        return float(is_dynamic(scores, frames.shape[0], *frames.shape[-2:]))


class LPIPSDistance(VideoMetric):
    """LPIPS (VGG) against the dense video, frame mean; lower is closer."""

    name = "lpips"
    needs_reference = True
    higher_is_better = False

    def __init__(self, net: LPIPS):
        self.net = net

    @classmethod
    def load(cls, vgg_path, lin_path, vgg_key: str = "backbones.lpips_vgg", lin_key: str = "backbones.lpips_lin"):
        vgg = require_path(vgg_path, vgg_key, "torchvision's VGG16 weights (vgg16-397923af.pth)")
        lin = require_path(lin_path, lin_key, "LPIPS's VGG linear layers (lpips weights/v0.1/vgg.pth)")
        return cls(LPIPS.load(vgg, lin, vgg_key, lin_key))

    def score(self, video, prompt, reference=None):
        frame = lambda x: limit_long_side(to_float(x[None]).to(self._device))  # noqa: E731
        d = [self.net(frame(a), frame(b)) for a, b in zip(video, reference)]
        return float(torch.cat(d).mean())
