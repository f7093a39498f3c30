"""Pure differentiable functions on tensors."""

from .flow import flow_l2, flow_tv, flow_tv_loss
from .warp import flow_warp

__all__ = ["flow_warp", "flow_tv_loss", "flow_tv", "flow_l2"]
from .affine import affine_flow, affine_warp, identity_theta, rotation_translation_theta, theta_to_normalized, theta_to_pixels

__all__ += ["affine_warp", "affine_flow", "identity_theta", "rotation_translation_theta", "theta_to_pixels", "theta_to_normalized"]
