"""Invariants every attack call must satisfy (DESIGN.md, "Tests that mean something")."""

import torch


def run_checked(attack, model, x, y, target=None):
    """Run ``attack`` and assert the contract shared by all attacks; return the result."""
    x_ref, y_ref = x.clone(), y.clone()
    t_ref = None if target is None else target.clone()
    res = attack(model, x, y, target=target)
    # inputs untouched, parameters received no gradient
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    if target is not None:
        assert torch.equal(target, t_ref)
    assert all(p.grad is None for p in model.parameters())
    n = x.shape[0]
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.success.shape == (n,) and res.success.dtype == torch.bool
    assert res.iterations.shape == (n,) and res.iterations.dtype == torch.int64
    return res
