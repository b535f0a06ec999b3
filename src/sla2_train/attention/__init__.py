"""SLA2 attention: the module (router, α, dispatch) and its pure-PyTorch reference."""

from . import reference
from .module import SLA2Attention

__all__ = ["SLA2Attention", "reference"]
