"""Sinkhorn OT loss (paper eq. 10, C.2) against POT, batching, envelope gradient, debiasing."""

import numpy as np
import ot
import pytest
import torch

import maestro_sc.model.sinkhorn as sk
from maestro_sc.model.sinkhorn import sinkhorn_cost, sinkhorn_plan, squared_distances

TIGHT = dict(max_iter=5000, tol=1e-10)


def pot_value(x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    m = ot.dist(x.numpy(), y.numpy())  # squared Euclidean
    return float(ot.solve(m, reg=eps, max_iter=5000, tol=1e-12).value)


@pytest.mark.parametrize(("n", "k", "rel"), [(5, 5, 0.1), (30, 45, 0.05), (120, 90, 0.02)])
def test_value_matches_pot(n, k, rel):
    x, y = torch.randn(2, n, 3, dtype=torch.float64), torch.randn(2, k, 3, dtype=torch.float64)
    y[1] = 0.5 * y[1] + 1.0
    values = sinkhorn_cost(x, y, rel, **TIGHT)
    for i in range(2):
        eps = rel * float(squared_distances(x[i : i + 1], y[i : i + 1]).mean())
        expected = pot_value(x[i], y[i], eps)
        assert abs(float(values[i]) - expected) <= 1e-4 * abs(expected)


def test_float32_default_is_close_to_pot():
    x, y = torch.randn(1, 200, 8), torch.randn(1, 150, 8) * 0.7
    value, n_iter = sinkhorn_cost(x, y, 0.02, 500, 1e-5, return_n_iter=True)
    eps = 0.02 * float(squared_distances(x, y).mean())
    expected = pot_value(x[0].double(), y[0].double(), eps)
    assert abs(float(value[0]) - expected) <= 1e-3 * expected
    assert 1 <= n_iter < 500


def test_batched_equals_per_item():
    x, y = torch.randn(4, 60, 5, dtype=torch.float64), torch.randn(4, 70, 5, dtype=torch.float64)
    y = y * torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64).view(4, 1, 1)
    batched = sinkhorn_cost(x, y, 0.05, **TIGHT)
    single = torch.cat([sinkhorn_cost(x[i : i + 1], y[i : i + 1], 0.05, **TIGHT) for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-9, atol=0)


def test_gradient_matches_pot_envelope():
    x = torch.randn(1, 40, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 50, 3, dtype=torch.float64, requires_grad=True)
    eps = 0.05 * float(squared_distances(x, y).detach().mean())
    sinkhorn_cost(x, y, epsilon=eps, **TIGHT).sum().backward()

    xp, yp = x[0].detach().clone().requires_grad_(), y[0].detach().clone().requires_grad_()
    res = ot.solve(ot.dist(xp, yp), reg=eps, grad="envelope", max_iter=5000, tol=1e-12)
    res.value.backward()
    torch.testing.assert_close(x.grad[0], xp.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(y.grad[0], yp.grad, rtol=1e-6, atol=1e-9)


def test_gradient_matches_finite_differences():
    x = torch.randn(1, 12, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 15, 2, dtype=torch.float64)
    eps = 0.1 * float(squared_distances(x, y).detach().mean())
    sinkhorn_cost(x, y, epsilon=eps, **TIGHT).sum().backward()
    h, numeric = 1e-6, torch.zeros_like(x)
    with torch.no_grad():
        for idx in np.ndindex(*x.shape):
            plus, minus = x.clone(), x.clone()
            plus[idx] += h
            minus[idx] -= h
            diff = sinkhorn_cost(plus, y, epsilon=eps, **TIGHT) - sinkhorn_cost(
                minus, y, epsilon=eps, **TIGHT
            )
            numeric[idx] = diff.sum() / (2 * h)
    torch.testing.assert_close(x.grad, numeric, rtol=1e-5, atol=1e-7)


def test_identical_sets_debiased_is_zero():
    x = torch.randn(2, 80, 4, dtype=torch.float64)
    loose = dict(max_iter=500, tol=1e-8)
    plain = sinkhorn_cost(x, x.clone(), 0.05, **loose)
    debiased = sinkhorn_cost(x, x.clone(), 0.05, debiased=True, **loose)
    assert (plain > 0).all()  # the entropic bias
    assert debiased.abs().max() < 1e-8 * plain.min()
    other = sinkhorn_cost(x, x + 1.0, 0.05, debiased=True, **loose)
    assert (other > 0.5).all()


def test_small_epsilon_is_stable_in_float32():
    x, y = torch.randn(3, 300, 10) * 3, torch.randn(3, 200, 10)
    x.requires_grad_(True)
    value = sinkhorn_cost(x, y, 1e-3, max_iter=300, tol=1e-4)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(x.grad).all()


def test_overrelaxation_same_solution_fewer_iterations():
    centers = torch.randn(5, 6, dtype=torch.float64) * 3
    x = centers[torch.randint(0, 5, (2, 150))] + 0.3 * torch.randn(2, 150, 6, dtype=torch.float64)
    y = centers[torch.randint(0, 5, (2, 120))] + 0.3 * torch.randn(2, 120, 6, dtype=torch.float64)
    runs = {
        flag: sinkhorn_cost(x, y, 0.02, 20000, 1e-7, overrelax=flag, return_n_iter=True)
        for flag in (False, True)
    }
    (plain, plain_iters), (fast, fast_iters) = runs[False], runs[True]
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=0)
    assert fast_iters < 0.5 * plain_iters


def _clustered_pair(seed: int, n: int = 200, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """8 pairs of clustered sets, ``y`` a close copy of ``x`` (a good reconstruction)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(6, d, generator=g, dtype=torch.float64) * 2
    noise = torch.randn(8, n, d, generator=g, dtype=torch.float64)
    x = centers[torch.randint(0, 6, (8, n), generator=g)] + 0.5 * noise
    y = x[:, torch.randperm(n, generator=g)] + 0.1 * torch.randn(8, n, d, generator=g).double()
    return x, y


def test_each_problem_converges_on_its_own_in_a_batch():
    """Problems that converge early leave the batch; each still meets the tolerance."""
    x, y = _clustered_pair(0, n=80)
    cost = squared_distances(x, y)
    eps = torch.logspace(-0.3, -0.9, 8, dtype=torch.float64) * cost.mean(dim=(1, 2))
    tol = 1e-6
    plan, f, g, n_iter = sinkhorn_plan(cost, eps, 5000, tol)
    alone = [sinkhorn_plan(cost[i : i + 1], eps[i : i + 1], 5000, tol) for i in range(8)]
    iters = [r[3] for r in alone]
    assert max(iters) > 4 * min(iters)  # so the fast ones leave the batch early
    assert n_iter >= max(iters) // 2
    n, k = cost.shape[1:]
    rows = (plan.sum(dim=2) * n - 1).abs().mean(dim=1)
    cols = (plan.sum(dim=1) * k - 1).abs().mean(dim=1)
    assert rows.max() < 10 * tol and cols.max() < 1e-12
    for i, (p, _, _, _) in enumerate(alone):
        assert float((plan[i] - p[0]).abs().sum()) < 10 * tol
        # P = a b exp(f + g - C / eps) must hold with the returned potentials
        rebuilt = torch.exp(f[i, :, None] + g[i, None, :] - cost[i] / eps[i]) / (n * k)
        torch.testing.assert_close(plan[i], rebuilt, rtol=1e-9, atol=1e-15)


def test_reestimated_factor_follows_the_sor_relation():
    """Given the decay of over-relaxed iterations, the factor for the plain rate behind it."""
    for plain_rate in (0.5, 0.9, 0.97):
        omega = 1.05
        # the decay of SOR at omega below the optimum: the largest root of
        # (l + w - 1)^2 = l w^2 r
        p = 2 * (omega - 1) - omega**2 * plain_rate
        decay = (-p + ((p * p) - 4 * (omega - 1) ** 2) ** 0.5) / 2
        got = sk._reestimate_omega(omega, 1.0, decay**10, 10)
        optimum = 2 / (1 + (1 - plain_rate) ** 0.5)
        assert got == pytest.approx(min(sk._MAX_OMEGA, max(omega, optimum)), rel=1e-9)
    # nothing to learn from errors that did not decrease
    assert sk._reestimate_omega(1.3, 1.0, 1.5, 10) == 1.3
    assert sk._reestimate_omega(1.3, 0.0, 0.0, 10) == 1.3


@pytest.mark.parametrize("seed", range(4))
def test_raising_the_factor_never_costs_much(seed, monkeypatch):
    """The factor is put back when raising it slowed convergence down.

    A raise is judged over the next ``_REESTIMATE`` iterations, so a bad one costs about that
    many iterations and no more.
    """
    x, y = _clustered_pair(seed)
    cost = squared_distances(x, y)
    eps = 0.02 * cost.mean(dim=(1, 2))
    plan, _, _, n_iter = sinkhorn_plan(cost, eps, 5000, 1e-4)
    monkeypatch.setattr(sk, "_REESTIMATE", 10**9)
    plan_fixed, _, _, n_iter_fixed = sinkhorn_plan(cost, eps, 5000, 1e-4)
    assert n_iter <= n_iter_fixed + 2 * sk._REESTIMATE
    # the same solution, to the tolerance
    assert float((plan - plan_fixed).abs().sum(dim=(1, 2)).max()) < 10 * 1e-4


@pytest.mark.parametrize("cap", [30, 2000])
def test_potentials_and_columns_hold_with_absorption_and_a_cap(cap):
    """Small epsilons absorb the scalings into the potentials while other problems have left.

    Whether a problem converged or hit the cap, its plan is ``a b exp(f + g - C / eps)`` with
    the returned potentials, and its column marginals are exact.
    """
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 60, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 50, 3, generator=gen, dtype=torch.float64)
    cost = squared_distances(x, y)
    rel = torch.tensor([0.5, 0.2, 0.05, 0.02, 0.005, 0.002], dtype=torch.float64)
    eps = rel * cost.mean(dim=(1, 2))
    plan, f, g, n_iter = sinkhorn_plan(cost, eps, cap, 1e-6)
    assert n_iter <= cap
    rebuilt = torch.exp(f[:, :, None] + g[:, None, :] - cost / eps[:, None, None]) / (60 * 50)
    torch.testing.assert_close(plan, rebuilt, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(plan.sum(dim=1), torch.full((6, 50), 1 / 50, dtype=torch.float64))
    rows = (plan.sum(dim=2) * 60 - 1).abs().mean(dim=1)
    assert rows[:2].max() < 1e-5  # the large epsilons converge within 30 iterations
