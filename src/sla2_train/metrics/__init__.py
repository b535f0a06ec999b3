"""Quality metrics: SLA2 against full attention, per layer and on generated videos (VBench definitions)."""

from .attention_error import relative_l1
from .backbones import MissingWeights
from .flops import dense_attention_flops, sla2_attention_flops
from .image_quality import video_psnr, video_ssim
from .video_metrics import (
    PSNR,
    SSIM,
    AestheticQuality,
    BackgroundConsistency,
    ClipTextScore,
    DynamicDegree,
    ImagingQuality,
    LPIPSDistance,
    MotionSmoothness,
    SubjectConsistency,
    TemporalFlickering,
    VideoMetric,
)

__all__ = [
    "PSNR",
    "SSIM",
    "AestheticQuality",
    "BackgroundConsistency",
    "ClipTextScore",
    "DynamicDegree",
    "ImagingQuality",
    "LPIPSDistance",
    "MissingWeights",
    "MotionSmoothness",
    "SubjectConsistency",
    "TemporalFlickering",
    "VideoMetric",
    "dense_attention_flops",
    "relative_l1",
    "sla2_attention_flops",
    "video_psnr",
    "video_ssim",
]
