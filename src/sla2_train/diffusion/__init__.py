"""The diffusion process around the model: flow-matching noising for training, scheduler sampling for evaluation."""

from .flow_matching import FlowMatching
from .sampling import sample_latents

__all__ = ["FlowMatching", "sample_latents"]
