"""spatialadv: adversarial examples beyond L_p norms (spatial flows, baselines, evaluation)."""

__version__ = "0.1.0"
