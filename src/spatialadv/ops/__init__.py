"""Pure differentiable functions on tensors."""

from .flow import flow_l2, flow_tv, flow_tv_loss
from .warp import flow_warp

__all__ = ["flow_warp", "flow_tv_loss", "flow_tv", "flow_l2"]
