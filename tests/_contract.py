"""Invariants every attack call must satisfy (DESIGN.md, "Tests that mean something")."""

import torch


def run_checked(attack, model, x, y, target=None, index=None):
    """Run ``attack`` and assert the contract shared by all attacks; return the result."""
    x_ref, y_ref = x.clone(), y.clone()
    t_ref = None if target is None else target.clone()
    res = attack(model, x, y, target=target, index=index)
    # inputs untouched, parameters received no gradient
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    if target is not None:
        assert torch.equal(target, t_ref)
    assert all(p.grad is None for p in model.parameters())
    n = x.shape[0]
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.success.shape == (n,) and res.success.dtype == torch.bool
    assert res.grad_evals.shape == (n,) and res.grad_evals.dtype == torch.int64
    assert res.forward_evals.shape == (n,) and res.forward_evals.dtype == torch.int64
    assert bool((res.grad_evals >= 0).all()) and bool((res.forward_evals >= 0).all())
    # size in the threat's own units, named by unit; 0 where failed
    threat = attack.threat
    assert res.unit == threat.unit
    assert res.size.shape == (n,) and res.size.dtype == x.dtype
    assert bool((res.size[~res.success] == 0).all())
    ok = res.success
    if bool(ok.any()):
        torch.testing.assert_close(res.size[ok], threat.measure(x, res)[ok].to(x.dtype))
    # per-example parameters: first dim N, the identity where failed (solver statistics excepted)
    for key, value in res.params.items():
        assert value.shape[0] == n, key
        fail = value[~ok]
        if key in attack.solver_params:
            continue
        if key == "theta":
            eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=value.dtype).expand_as(fail)
            assert torch.equal(fail, eye)
        else:
            assert bool((fail == 0).all()), key
    return res
