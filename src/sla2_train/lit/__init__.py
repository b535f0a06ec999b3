"""Training: the LightningModule, stages as config, their objectives, callbacks."""

from .module import SLA2Module
from .objectives import AttentionDistillation, FlowMatchingLoss
from .param_groups import GROUPS, parameter_groups, set_trainable
from .stage import Stage

__all__ = [
    "GROUPS",
    "AttentionDistillation",
    "FlowMatchingLoss",
    "SLA2Module",
    "Stage",
    "parameter_groups",
    "set_trainable",
]
