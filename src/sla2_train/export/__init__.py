"""From training to use: export a checkpoint to a diffusers folder, load it back, put SLA2 into a WanPipeline."""

from .checkpoint_format import EMA_KEY, META_KEY, TrainedWeights, checkpoint_metadata, read_training_checkpoint
from .exporter import export_checkpoint
from .folder import read_exported
from .install import install_sla2
from .loading import load_weights, read_weights

__all__ = [
    "EMA_KEY",
    "META_KEY",
    "TrainedWeights",
    "checkpoint_metadata",
    "export_checkpoint",
    "install_sla2",
    "load_weights",
    "read_exported",
    "read_training_checkpoint",
    "read_weights",
]
