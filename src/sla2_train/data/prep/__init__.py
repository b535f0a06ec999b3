"""Dataset preparation: videos + captions → latent/text shards (entry point: `sla2-prepare`, sla2_train/commands/prepare.py)."""

from .encoders import EncoderSpec, TextEncoder, VaeEncoder, prompt_clean
from .pipeline import OutputSpec, Preparer, Report
from .sources import VideoItem, discover
from .video import ClipSpec, TooShort, UnreadableVideo, load_clip

__all__ = [
    "ClipSpec",
    "EncoderSpec",
    "OutputSpec",
    "Preparer",
    "Report",
    "TextEncoder",
    "TooShort",
    "UnreadableVideo",
    "VaeEncoder",
    "VideoItem",
    "discover",
    "load_clip",
    "prompt_clean",
]
