"""Training: the LightningModule, stages as config, objectives, and flow-matching noising."""

from .cli_errors import config_errors_as_one_line
from .distill_objective import AttentionDistillation
from .flow_matching import FlowMatching
from .flow_objective import FlowMatchingLoss
from .module import SLA2Module
from .param_groups import GROUPS, parameter_groups, set_trainable
from .stage import Stage

__all__ = [
    "GROUPS",
    "AttentionDistillation",
    "FlowMatching",
    "FlowMatchingLoss",
    "SLA2Module",
    "Stage",
    "config_errors_as_one_line",
    "parameter_groups",
    "set_trainable",
]
