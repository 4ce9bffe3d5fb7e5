"""Our batched Sinkhorn loss against POT on the same inputs, epsilon and tolerance.

Inputs: 4 pairs (the 4 masked views of a training step) of cytometry-like point sets, n cells x
30 markers each: ``x`` from a mixture of 12 populations, ``y`` from the same populations with
other proportions and slightly moved centres (a reconstruction), standardised per marker.
Squared Euclidean cost, uniform weights, ``eps = 0.02 x mean cost`` of each pair.

- **value**: ``maestro_sc.model.sinkhorn.sinkhorn_cost`` (the entropic objective at the optimum,
  ``<P, C> + eps KL(P || ab)``) against POT's ``ot.solve(M, a, b, reg=eps).value`` (the same
  quantity), both run to a tight marginal error in float64; and our plan's ``<P, C>`` against
  ``ot.sinkhorn2(a, b, M, eps, method="sinkhorn_log")`` (which returns ``<P, C>`` only);
- **time, forward + backward, float32** at the training tolerance: ours is one call batched over
  the 4 views (log-domain-stabilised, over-relaxed scaling iterations, envelope gradient), and
  one call on a single view; POT is one ``ot.solve(..., grad="envelope")`` call per view
  (log-domain Sinkhorn, its envelope gradient) with ``M = ot.dist(x, y)`` built by torch so the
  backward reaches the points, then ``value.backward()``. POT's time for the 4 views is the sum
  of 4 calls up to ``--pot-full-max-n``, and 4x one call above (a POT call at n = 5000 takes
  minutes on 2 shared cores). ``ot.sinkhorn2(method="sinkhorn_log")`` runs the same iterations as
  ``ot.solve`` (its forward time is the same); its gradient is autodiff through every iteration
  (memory ``O(iterations x n^2)``), so it is only used for the value check.
- **same tolerance**: ours stops on the L1 row-marginal error < ``tol``; POT checks the L2
  column-marginal error every 10 iterations, so it gets ``tol / sqrt(n)`` (which bounds its L1
  error by ``tol``). The final L1 marginal errors of both plans are printed.
- **iterations** to converge for both.

Example::

    python benchmarks/sinkhorn_vs_pot.py --threads 1               # n = 1k, 2k
    python benchmarks/sinkhorn_vs_pot.py --threads 1 --sizes 1000,2000,5000   # + 5k (long)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
from _machine import machine

from maestro_sc.model.sinkhorn import sinkhorn_cost, sinkhorn_plan, squared_distances

N_VIEWS = 4
N_MARKERS = 30
EPS_REL = 0.02


def pot_machine() -> str:
    """The machine line, with the POT version."""
    import ot

    return machine(f"POT {ot.__version__} | ")


def point_sets(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(4, n, 30)`` original and reconstructed sets, standardised by the originals' scaler."""
    rng = np.random.default_rng(seed)
    k = 12
    centers = rng.uniform(0, 4, size=(k, N_MARKERS))
    xs, ys = [], []
    for _ in range(N_VIEWS):
        px = rng.dirichlet(np.full(k, 2.0))
        py = 0.7 * px + 0.3 * rng.dirichlet(np.full(k, 2.0))
        x = centers[rng.choice(k, n, p=px)] + 0.4 * rng.standard_normal((n, N_MARKERS))
        moved = centers + 0.2 * rng.standard_normal(centers.shape)
        y = moved[rng.choice(k, n, p=py)] + 0.5 * rng.standard_normal((n, N_MARKERS))
        xs.append(x)
        ys.append(y)
    x, y = np.stack(xs), np.stack(ys)
    mean, std = x.reshape(-1, N_MARKERS).mean(0), x.reshape(-1, N_MARKERS).std(0)
    return torch.from_numpy((x - mean) / std), torch.from_numpy((y - mean) / std)


class _Recorder:
    """Wraps the ``sinkhorn_log`` that ``ot.solve`` calls, keeping its iterations and plan error."""

    def __init__(self) -> None:
        import ot.solvers._linear as linear

        self.module, self.inner = linear, linear.sinkhorn_log
        self.iters: list[int] = []
        self.errors: list[float] = []

    def __call__(self, a, b, M, reg, **kw):
        plan, log = self.inner(a, b, M, reg, **kw)
        self.iters.append(int(log["niter"]) + 1)  # 0-based; POT checks every 10 iterations
        self.errors.append(float((plan.sum(0) - b).abs().sum()))  # rows are exact in POT
        return plan, log

    def __enter__(self):
        self.module.sinkhorn_log = self
        return self

    def __exit__(self, *exc):
        self.module.sinkhorn_log = self.inner
        return False


def ours(x, y, max_iter, tol):
    """Forward + backward of our loss over the views of ``x, y`` in one call."""
    x = x.clone().requires_grad_(True)
    y = y.clone().requires_grad_(True)
    value, n_iter = sinkhorn_cost(x, y, EPS_REL, max_iter, tol, return_n_iter=True)
    value.sum().backward()
    return value.detach(), n_iter, x.grad


def pot_solve(x, y, max_iter, tol, backward=True):
    """POT ``ot.solve`` (log-domain Sinkhorn, envelope gradient), one call per view.

    Returns the values, the gradients w.r.t. ``x`` (or None), and per view the seconds
    (forward + backward), the iterations and the L1 marginal error.
    """
    import ot

    values, grads, seconds = [], [], []
    with _Recorder() as rec:
        for b in range(x.shape[0]):
            t = time.perf_counter()
            xb = x[b].clone().requires_grad_(backward)
            yb = y[b].clone().requires_grad_(backward)
            m = ot.dist(xb, yb)  # squared Euclidean
            eps = EPS_REL * float(m.detach().mean())
            w = torch.full((m.shape[0],), 1.0 / m.shape[0], dtype=m.dtype)
            res = ot.solve(
                m,
                w,
                w,
                reg=eps,
                max_iter=max_iter,
                tol=tol / math.sqrt(m.shape[0]),
                grad="envelope" if backward else "detach",
            )
            if backward:
                res.value.backward()
                grads.append(xb.grad)
            values.append(res.value.detach())
            seconds.append(time.perf_counter() - t)
    grads = torch.stack(grads) if backward else None
    return torch.stack(values), grads, seconds, rec.iters, rec.errors


def our_plan(x, y, max_iter, tol):
    """Our plan's L1 row-marginal error (its columns are exact) and ``<P, C>``."""
    cost = squared_distances(x, y)
    eps = EPS_REL * cost.mean(dim=(1, 2))
    plan, _, _, n_iter = sinkhorn_plan(cost, eps, max_iter, tol)
    err = (plan.sum(2) - 1.0 / x.shape[1]).abs().sum(1).max()
    return float(err), (plan * cost).sum(dim=(1, 2)), n_iter


def sinkhorn2(x, y, max_iter, tol):
    """``ot.sinkhorn2(method="sinkhorn_log")`` per view: ``<P, C>`` at POT's plan."""
    import ot

    values = []
    for b in range(x.shape[0]):
        m = ot.dist(x[b], y[b])
        eps = EPS_REL * float(m.mean())
        w = torch.full((m.shape[0],), 1.0 / m.shape[0], dtype=m.dtype)
        values.append(
            ot.sinkhorn2(
                w,
                w,
                m,
                eps,
                method="sinkhorn_log",
                numItermax=max_iter,
                stopThr=tol / math.sqrt(m.shape[0]),
            )
        )
    return torch.stack(values)


def timed(repeats, fn, *args):
    """Min and median seconds of ``repeats`` calls ``fn(*args)``, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), out


def rel(a, b) -> float:
    return float(((a - b).abs() / b.abs()).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,2000")
    parser.add_argument("--tol", type=float, default=1e-3, help="training tolerance (L1)")
    parser.add_argument("--tight-tol", type=float, default=1e-4, help="value check (L1)")
    parser.add_argument("--max-iter", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours; POT: --pot-repeats")
    parser.add_argument("--pot-repeats", type=int, default=2)
    parser.add_argument(
        "--pot-full-max-n",
        type=int,
        default=1000,
        help="above this n POT is timed on 1 view and multiplied by 4",
    )
    parser.add_argument(
        "--value-max-n",
        type=int,
        default=1000,
        help="largest n for the float64 tight-tolerance value check",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", default=None, help="append the records to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# machine: {pot_machine()}")
    print(
        f"# {N_VIEWS} views x n cells x {N_MARKERS} markers, clustered, standardised; "
        f"eps = {EPS_REL} x mean cost; tol {args.tol:g} (L1 marginal), cap {args.max_iter}"
    )
    records = []
    for n in [int(float(s)) for s in args.sizes.split(",")]:
        rec = {"n": n}
        x64, y64 = point_sets(n, seed=n)
        if n <= args.value_max_n:
            v_ours, it_tight = sinkhorn_cost(
                x64, y64, EPS_REL, args.max_iter, args.tight_tol, return_n_iter=True
            )
            v_pot, _, _, it_pot_tight, _ = pot_solve(
                x64, y64, args.max_iter, args.tight_tol, backward=False
            )
            _, lin_ours, _ = our_plan(x64, y64, args.max_iter, args.tight_tol)
            rec.update(
                value_rel_diff_f64=rel(v_ours, v_pot),
                linear_rel_diff_f64=rel(
                    lin_ours, sinkhorn2(x64, y64, args.max_iter, args.tight_tol)
                ),
                iters_tight=f"{it_tight} / {max(it_pot_tight)}",
            )
        x, y = x64.float(), y64.float()
        t_ours, m_ours, (v32, it_ours, g_ours) = timed(
            args.repeats, ours, x, y, args.max_iter, args.tol
        )
        # the same views one call each: the batch runs until its slowest view has converged
        singles = [
            timed(args.repeats, ours, x[b : b + 1], y[b : b + 1], args.max_iter, args.tol)
            for b in range(N_VIEWS)
        ]
        k = N_VIEWS if n <= args.pot_full_max_n else 1
        t_pot, m_pot, (v32_pot, g_pot, pot_s, it_pot, err_pot) = timed(
            args.pot_repeats if k == N_VIEWS else 1,
            pot_solve,
            x[:k],
            y[:k],
            args.max_iter,
            args.tol,
        )
        err_ours, _, _ = our_plan(x, y, args.max_iter, args.tol)
        pot4 = t_pot * N_VIEWS / k
        rec.update(
            value_rel_diff_f32=rel(v32[:k], v32_pot),
            grad_cosine=float(
                torch.nn.functional.cosine_similarity(g_ours[:k].flatten(), g_pot.flatten(), dim=0)
            ),
            ours_s_min=t_ours,
            ours_s_median=m_ours,
            ours_single_calls_s=sum(t for t, _, _ in singles),
            ours_view_iters=[o[2][1] for o in singles],
            pot_views_timed=k,
            pot_view_s=pot_s,
            pot_view_iters=it_pot,
            pot_s_min=pot4,
            pot_s_median=m_pot * N_VIEWS / k,
            speedup=pot4 / t_ours,
            speedup_view0=pot_s[0] / singles[0][0],
            ours_iters=it_ours,
            ours_l1_err=err_ours,
            pot_l1_err=max(err_pot),
            runs=args.repeats,
        )
        records.append(rec)
        print(
            json.dumps(
                {key: (round(v, 7) if isinstance(v, float) else v) for key, v in rec.items()}
            ),
            flush=True,
        )

    print("\nvalue: float64, tolerance --tight-tol for both (iterations ours / POT):")
    print("| n | ours vs ot.solve(...).value | ours ⟨P,C⟩ vs ot.sinkhorn2 | iterations |")
    print("|---:|---:|---:|---:|")
    for r in records:
        if "value_rel_diff_f64" in r:
            print(
                f"| {r['n']:,} | {r['value_rel_diff_f64']:.1e} | "
                f"{r['linear_rel_diff_f64']:.1e} | {r['iters_tight']} |"
            )
    print(f"\nforward + backward, float32, tolerance {args.tol:g}, 4 views:")
    print(
        "| n | ours, 1 batched call (s) | ours, 4 calls (s) | POT ot.solve, 4 calls (s) "
        "| speedup (batched) | speedup view 0 | iterations ours batch (per view) | POT "
        "iterations per view | L1 marginal error ours / POT | value rel. diff | grad cosine |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in records:
        star = "" if r["pot_views_timed"] == N_VIEWS else "*"
        print(
            f"| {r['n']:,} | {r['ours_s_min']:.2f} ({r['ours_s_median']:.2f}) "
            f"| {r['ours_single_calls_s']:.2f} | {r['pot_s_min']:.1f}{star} "
            f"| {r['speedup']:.0f}× | {r['speedup_view0']:.0f}× "
            f"| {r['ours_iters']} ({', '.join(map(str, r['ours_view_iters']))}) "
            f"| {', '.join(map(str, r['pot_view_iters']))} "
            f"| {r['ours_l1_err']:.1e} / {r['pot_l1_err']:.1e} "
            f"| {r['value_rel_diff_f32']:.1e} | {r['grad_cosine']:.4f} |"
        )
    print("times: min (median) of the runs; * = 4 x the POT call on view 0 (the only one timed)")
    if args.json:
        with open(args.json, "a") as f:
            for rec in records:
                f.write(json.dumps({"machine": pot_machine(), **rec}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
