"""Entropic optimal transport loss (paper eq. 10, Algorithm 2, appendix C.2), batched, log domain.

``sinkhorn_cost`` returns the entropic objective at its optimum,
``<P, C> + eps * KL(P || a b^T)`` with uniform weights and squared Euclidean cost, which is what
POT's ``ot.solve(M, a, b, reg=eps).value`` returns. Its gradient is taken by the envelope
theorem: the potentials are computed without autograd and only the final plan enters a small
differentiable expression, so memory does not grow with the number of iterations.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise ``||x_i - y_j||^2`` for batches ``(B, n, d)`` and ``(B, k, d)``, clamped at 0.

    One fused ``baddbmm`` and an in-place clamp: two passes over the ``(B, n, k)`` result.
    """
    xx = (x * x).sum(-1, keepdim=True)
    yy = (y * y).sum(-1).unsqueeze(-2)
    return torch.baddbmm(xx + yy, x, y.transpose(-1, -2), alpha=-2).clamp_min_(0)


#: Plain Sinkhorn iterations before the over-relaxation factor is first estimated from their rate.
_WARMUP = 10
#: The factor is re-estimated every this many iterations from the over-relaxed error decay.
_REESTIMATE = 10
#: Largest over-relaxation factor; 1.9 was seen to overshoot into overflow on clustered data.
_MAX_OMEGA = 1.8
#: Converged problems leave the batch once they are at least this fraction of it.
_COMPACT_FRACTION = 0.25


def _decay(first: float, last: float, steps: int) -> float | None:
    """Error decay per iteration from ``first`` to ``last``, ``steps`` iterations apart.

    ``None`` unless the error is finite and went down.
    """
    if not (0 < last < first and math.isfinite(first)):
        return None
    return (last / first) ** (1 / steps)


def _omega(errors: list[float]) -> float:
    """Over-relaxation factor ``2 / (1 + sqrt(1 - r))``, at most ``_MAX_OMEGA``.

    ``r`` is the observed error decay of plain Sinkhorn over the last 5 iterations (Thibault et
    al. 2021; Lehmann et al. 2022).
    """
    rate = _decay(errors[-6], errors[-1], 5)
    if rate is None:
        return 1.0
    return min(_MAX_OMEGA, 2 / (1 + math.sqrt(1 - rate)))


def _reestimate_omega(omega: float, first: float, last: float, steps: int) -> float:
    """A larger factor when the over-relaxed iterations show plain Sinkhorn to be slower.

    The rate of plain Sinkhorn seen in its first iterations is faster than its asymptotic rate,
    so the first factor comes out too small. Over-relaxed with ``w``, an error that decays at
    ``l`` per iteration (from ``first`` to ``last`` in ``steps`` iterations) implies the plain
    rate ``r = (l + w - 1)^2 / (l w^2)`` (the SOR relation used by Thibault et al. 2021), hence
    the optimal ``2 / (1 + sqrt(1 - r))``. Never lowers ``omega``; at most ``_MAX_OMEGA``.
    """
    rate = _decay(first, last, steps)
    if rate is None:
        return omega
    plain = min((rate + omega - 1) ** 2 / (rate * omega * omega), 1 - 1e-12)
    return min(_MAX_OMEGA, max(omega, 2 / (1 + math.sqrt(1 - plain))))


class _Factors:
    """The over-relaxation factor of the batch, and how it is tuned.

    After ``_WARMUP`` plain iterations the factor is set from the observed rate of the largest
    error (:func:`_omega`): the slowest problem's, which suits the others too (they converge
    and leave the batch). Every ``_REESTIMATE`` iterations it is raised when the over-relaxed
    decay of any problem shows it too small (:func:`_reestimate_omega`), and put back for good
    when the slowest decay after a raise is slower than before it. On the training loss's
    batches, one factor per problem (each from its own rate, tuned the same way) needed more
    iterations than this shared one: a problem's own early rate underestimates its factor more.
    """

    def __init__(self) -> None:
        self.omega = 1.0
        self.tuning = True
        self.before: tuple[float, float] | None = None  # factor and slowest decay before a raise

    def update(self, n_iter: int, history: list[list[float]]) -> None:
        """Set or tune the factor at iteration ``n_iter`` from the row-error ``history``."""
        if n_iter == _WARMUP:
            self.omega = _omega([max(h) for h in history])
        elif n_iter > _WARMUP and (n_iter - _WARMUP) % _REESTIMATE == 0 and self.tuning:
            first, last = history[-1 - _REESTIMATE], history[-1]
            rate = max(
                (e1 / e0) ** (1 / _REESTIMATE) if 0 < e0 < math.inf else 1.0
                for e0, e1 in zip(first, last)
            )
            if self.before is not None and not rate <= self.before[1]:
                self.omega, self.tuning = self.before[0], False
            else:
                raised = max(
                    _reestimate_omega(self.omega, e0, e1, _REESTIMATE)
                    for e0, e1 in zip(first, last)
                )
                self.before = (self.omega, rate) if raised > self.omega else None
                self.omega = raised


@torch.no_grad()
def sinkhorn_plan(
    cost: Tensor,
    epsilon: Tensor,
    max_iter: int,
    tol: float,
    overrelax: bool = True,
    absorb_at: float = 30.0,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Entropic OT plan for uniform marginals by stabilised, over-relaxed Sinkhorn, batched.

    The potentials are kept in the log domain and absorbed into the kernel
    ``K = exp(f_i + g_j - C_ij / eps)``; between absorptions the iterations are scaling
    updates ``u = 1 / (K b v)``, ``v = 1 / (K^T a u)`` (two batched mat-vecs instead of two
    log-sum-exp passes over the whole matrix), and the scalings are folded back into
    ``f, g`` whenever ``|log u|`` or ``|log v|`` exceeds ``absorb_at`` (Schmitzer 2019), so
    nothing over- or underflows for small ``epsilon``. With ``overrelax``, after
    ``_WARMUP`` plain iterations each update becomes ``u <- u^(1 - w) u_sinkhorn^w`` with ``w``
    set from the observed convergence rate and tuned as the iterations go (:class:`_Factors`).
    The same fixed point, reached in a fraction of the iterations when ``epsilon`` is small
    (where plain Sinkhorn crawls). Should it ever produce a non-finite plan, the solve is redone
    without over-relaxation.

    Each problem stops on its own: once both of its L1 marginal errors are below ``tol`` it is
    finished, and converged problems leave the batch (whenever they are a quarter of it), so
    the remaining iterations multiply smaller matrices.

    Parameters
    ----------
    cost
        Costs ``(B, n, k)``.
    epsilon
        Regularisation per problem ``(B,)``.
    max_iter, tol
        Iteration cap; a problem is converged once its L1 row- and column-marginal errors are
        below ``tol`` (the column marginals are then made exact).
    overrelax
        Use adaptive over-relaxation.

    Returns
    -------
    The plan ``(B, n, k)``, potentials ``f`` ``(B, n)`` and ``g`` ``(B, k)`` in units of
    ``epsilon`` (``P = a_i b_j exp(f_i + g_j - C_ij / eps)``), and the iterations run (the
    largest over the problems).

    Examples
    --------
    >>> import torch
    >>> cost = torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(0))
    >>> plan, f, g, n_iter = sinkhorn_plan(cost, torch.full((2,), 0.1), 500, 1e-6)
    >>> [round(float(s), 4) for s in plan.sum(dim=(1, 2))]
    [1.0, 1.0]
    """
    n_problems, n, k = cost.shape
    scaled = cost / epsilon.view(-1, 1, 1)
    a, b = 1.0 / n, 1.0 / k
    # c-transform-like start: every row and column of the kernel has its largest entry at 1
    f = scaled.amin(dim=2)
    shifted = scaled - f.unsqueeze(2)
    g = shifted.amin(dim=1)
    plan = shifted.sub_(g.unsqueeze(1)).neg_().exp_()  # exp(f + g - C / eps), in place
    kernel = plan  # the kernel of the problems still iterating; the plan is written in place
    f_out, g_out = torch.empty_like(f), torch.empty_like(g)
    active = torch.arange(n_problems, device=cost.device)  # their indices in the batch
    # both scalings in one buffer (B, 1, n + k): batched mat-vecs without reshapes, and one
    # range check for both
    uv = cost.new_ones(n_problems, 1, n + k)
    zero = cost.new_zeros(1, 1, 1)  # the ignored input of baddbmm (beta = 0)
    history = []  # row errors of the active problems, one host list per iteration
    factors = _Factors()
    bound = math.exp(absorb_at)  # absorb once a scaling leaves [1 / bound, bound]

    def finish(rows: Tensor | None) -> None:
        """Make the columns exact and write the plan and potentials of the ``rows``."""
        kern, uu, ff, gg = (
            (kernel, uv[:, 0, :n], f, g)
            if rows is None
            else (kernel[rows], uv[rows, 0, :n], f[rows], g[rows])
        )
        vv = 1.0 / (a * (uu.unsqueeze(1) @ kern).squeeze(1)).clamp_min(1e-30)
        kern = kern.mul_(uu.unsqueeze(2) * (a * b)).mul_(vv.unsqueeze(1))
        where = active if rows is None else active[rows]
        if kern.data_ptr() != plan.data_ptr():
            plan.index_copy_(0, where, kern)
        f_out.index_copy_(0, where, ff + uu.log())
        g_out.index_copy_(0, where, gg + vv.log())

    def views() -> tuple[Tensor, ...]:
        """``K^T``, ``u``, ``v``, and the buffer the host reads once per iteration with its parts.

        The parts: row errors, column errors, smallest and largest scaling.
        """
        m = kernel.shape[0]
        read = cost.new_empty(2 * m + 2)
        parts = (read[:m], read[m : 2 * m], read[-2], read[-1])
        return kernel.transpose(1, 2), uv[:, :, :n], uv[:, :, n:], read, *parts

    kernel_t, u, v, read, row_error, col_error, lowest, highest = views()
    n_iter = 0
    while True:
        n_iter += 1
        omega = factors.omega
        # the row marginals over a: u * b (K v); v K^T is the faster batched mat-vec on CPU
        ratio = torch.baddbmm(zero, v, kernel_t, beta=0.0, alpha=b).mul_(u).clamp_min_(1e-30)
        torch.linalg.vector_norm(ratio - 1, ord=1, dim=(1, 2), out=row_error)
        # the Sinkhorn update u / ratio, over-relaxed: u / ratio^w = u^(1 - w) (u / ratio)^w
        u.div_(ratio if omega == 1.0 else ratio.pow_(omega))
        ratio = torch.baddbmm(zero, u, kernel, beta=0.0, alpha=a).mul_(v).clamp_min_(1e-30)
        torch.linalg.vector_norm(ratio - 1, ord=1, dim=(1, 2), out=col_error)
        v.div_(ratio if omega == 1.0 else ratio.pow_(omega))
        torch.aminmax(uv, out=(lowest, highest))
        *errors, s_min, s_max = read.tolist()  # the one host read of the iteration
        m = len(errors) // 2
        rows, cols = [e * a for e in errors[:m]], [e * b for e in errors[m:]]
        history.append(rows)
        if overrelax:
            factors.update(n_iter, history)
        done = [
            not (math.isfinite(r) and math.isfinite(c)) or (r < tol and c < tol)
            for r, c in zip(rows, cols)
        ]
        if all(done) or n_iter >= max_iter:
            break
        n_done = sum(done)
        if n_done >= _COMPACT_FRACTION * len(done):
            flags = torch.tensor(done, device=cost.device)
            finish(flags.nonzero().squeeze(1))
            keep = (~flags).nonzero().squeeze(1)
            kernel, uv, f, g, active = (t[keep] for t in (kernel, uv, f, g, active))
            kept = keep.tolist()
            history = [[h[i] for i in kept] for h in history[-1 - _REESTIMATE :]]
            kernel_t, u, v, read, row_error, col_error, lowest, highest = views()
        if s_max > bound or s_min < 1 / bound:
            f, g = f + u[:, 0].log(), g + v[:, 0].log()
            kernel = torch.exp(f.unsqueeze(2) + g.unsqueeze(1) - scaled[active])
            uv.fill_(1.0)
            kernel_t, u, v, read, row_error, col_error, lowest, highest = views()
    finish(None)
    # entries lie in [0, 1] when finite, so one sum tells whether any is not
    if factors.omega != 1.0 and not bool(torch.isfinite(plan.sum())):
        return sinkhorn_plan(cost, epsilon, max_iter, tol, overrelax=False, absorb_at=absorb_at)
    return plan, f_out, g_out, n_iter


def entropic_ot(
    x: Tensor,
    y: Tensor,
    epsilon: Tensor,
    max_iter: int,
    tol: float,
    overrelax: bool = True,
    cost: Tensor | None = None,
) -> tuple[Tensor, int]:
    """Entropic OT objective ``<P, C> + eps KL(P || a b^T)`` per pair, envelope gradient.

    ``epsilon`` ``(B,)`` is absolute. ``cost`` is ``squared_distances(x, y)`` when the caller
    has it already (computed here otherwise). Returns the values ``(B,)`` and the iteration
    count.
    """
    if cost is None:
        cost = squared_distances(x.detach(), y.detach())
    plan, f, g, n_iter = sinkhorn_plan(cost, epsilon, max_iter, tol, overrelax)
    del cost
    rows, cols = plan.sum(dim=2), plan.sum(dim=1)
    # with P = a b exp(f + g - C/eps): <P, C> + eps KL(P || ab) = eps (<rows, f> + <cols, g>)
    value = epsilon * ((rows * f).sum(dim=1) + (cols * g).sum(dim=1))
    # d value / d C = P (envelope theorem); this expression is <P, C(x, y)> with P constant
    linear = (
        (rows * (x * x).sum(-1)).sum(dim=1)
        + (cols * (y * y).sum(-1)).sum(dim=1)
        - 2 * (x * (plan @ y)).sum(dim=(1, 2))
    )
    return value + linear - linear.detach(), n_iter


def sinkhorn_cost(
    x: Tensor,
    y: Tensor,
    epsilon_rel: float = 0.02,
    max_iter: int = 100,
    tol: float = 1e-3,
    debiased: bool = False,
    *,
    epsilon: float | Tensor | None = None,
    overrelax: bool = True,
    return_n_iter: bool = False,
) -> Tensor | tuple[Tensor, int]:
    """Entropic OT loss between batches of point sets (paper eq. 10, appendix C.2).

    Parameters
    ----------
    x, y
        Point sets ``(B, n, d)`` and ``(B, k, d)`` with uniform weights; squared Euclidean cost.
    epsilon_rel
        Regularisation relative to each pair's mean cost (detached): ``eps = epsilon_rel *
        mean(C)``, so the loss behaves the same whatever the scale of the data.
    max_iter, tol
        Sinkhorn iteration cap and tolerance on the L1 marginal error.
    debiased
        Return the Sinkhorn divergence ``OT(x, y) - (OT(x, x) + OT(y, y)) / 2`` (same ``eps``),
        which is 0 for identical sets.
    epsilon
        Absolute regularisation (scalar or ``(B,)``); overrides ``epsilon_rel``.
    overrelax
        Adaptive over-relaxation of the Sinkhorn updates (same solution, fewer iterations);
        see :func:`sinkhorn_plan`.
    return_n_iter
        Also return the number of Sinkhorn iterations run (largest over the calls).

    Returns
    -------
    Loss per pair ``(B,)`` (float32); with ``return_n_iter`` a tuple ``(loss, n_iter)``.

    Examples
    --------
    >>> import torch
    >>> x, y = torch.randn(3, 50, 4), torch.randn(3, 60, 4)
    >>> sinkhorn_cost(x, y).shape
    torch.Size([3])
    """
    with torch.autocast(x.device.type, enabled=False):
        x = x if x.dtype == torch.float64 else x.float()
        y = y.to(x.dtype)
        cost = squared_distances(x.detach(), y.detach())  # one distance matrix, used twice
        if epsilon is None:
            eps = epsilon_rel * cost.mean(dim=(1, 2))
        else:
            eps = torch.as_tensor(epsilon, dtype=x.dtype, device=x.device).expand(x.shape[0])
        value, n_iter = entropic_ot(x, y, eps, max_iter, tol, overrelax, cost=cost)
        del cost
        if debiased:
            value_xx, iter_xx = entropic_ot(x, x, eps, max_iter, tol, overrelax)
            value_yy, iter_yy = entropic_ot(y, y, eps, max_iter, tol, overrelax)
            value = value - 0.5 * (value_xx + value_yy)
            n_iter = max(n_iter, iter_xx, iter_yy)
    return (value, n_iter) if return_n_iter else value
