"""Feature networks behind the VBench metrics, each loaded from local weights (never downloaded)."""

from .aesthetic import load_aesthetic_head
from .clip import ClipFeatures
from .dino import DinoFeatures
from .loading import MissingWeights, require_path
from .lpips import LPIPS
from .raft import load_raft
from .scripted import load_scripted

__all__ = [
    "ClipFeatures",
    "DinoFeatures",
    "LPIPS",
    "MissingWeights",
    "load_aesthetic_head",
    "load_raft",
    "load_scripted",
    "require_path",
]
