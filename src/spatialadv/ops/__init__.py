"""Pure differentiable functions on tensors."""

from .flow import FLOW_UNITS, flow_l2, flow_tv, flow_tv_loss, neumann_smoother, to_normalized, to_pixels
from .warp import flow_warp

__all__ = ["flow_warp", "flow_tv_loss", "flow_tv", "flow_l2", "to_normalized", "to_pixels", "neumann_smoother", "FLOW_UNITS"]
from .affine import affine_flow, affine_warp, identity_theta, rotation_translation_theta, theta_to_normalized, theta_to_pixels

__all__ += ["affine_warp", "affine_flow", "identity_theta", "rotation_translation_theta", "theta_to_pixels", "theta_to_normalized"]
