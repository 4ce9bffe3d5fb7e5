"""Sinkhorn iterations of the training loss as training goes on, and the over-relaxation factor.

Trains the ``cpu`` preset by hand (as ``train_profile.py`` does) on the 40-sample synthetic
cohort, keeps the batched transport problems of the reconstruction loss (8 samples x 4 views) at
a few steps, and solves each batch again to the training tolerance with a high iteration cap:
with the over-relaxation factor of ``sinkhorn_plan`` (estimated after 10 plain iterations, then
re-estimated every 10), with its first estimate only, and with fixed factors. Reports the
iterations each needs (the batch's slowest problem) and the factor first chosen; the training
itself stops at ``ot_max_iter`` (100).

Example::

    python benchmarks/sinkhorn_in_training.py            # ~5 min on 1 thread
"""

from __future__ import annotations

import argparse
import sys

import torch
from _machine import machine
from train_profile import batches, make_step, setup

import maestro_sc.model.maestro as maestro_module
import maestro_sc.model.sinkhorn as sinkhorn


def capture(seed: int, at: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The cost matrices and epsilons of the reconstruction loss at the steps ``at``."""
    _, _, net, dataset = setup(40, seed, "cpu")
    cfg = net.config
    net.train()
    seen = {}
    original = maestro_module.sinkhorn_cost

    def spy(x, y, *args, **kwargs):
        seen["xy"] = (x.detach(), y.detach())
        return original(x, y, *args, **kwargs)

    maestro_module.sinkhorn_cost = spy
    try:
        step = make_step(net, batches(dataset, cfg, seed), seed)
        out = {}
        for i in range(max(at) + 1):
            step()
            if i in at:
                cost = sinkhorn.squared_distances(*seen["xy"])
                out[i] = (cost, cfg.ot_epsilon * cost.mean(dim=(1, 2)))
    finally:
        maestro_module.sinkhorn_cost = original
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 25, 50, 100, 200, 300])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--omegas", type=float, nargs="+", default=[1.6, 1.7, 1.8])
    parser.add_argument("--cap", type=int, default=1000, help="iteration cap of the re-solve")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"# machine: {machine()}")
    tol = 1e-3
    adaptive, every = sinkhorn._omega, sinkhorn._REESTIMATE
    header = ["seed", "step", "first factor", "re-estimated", "first estimate only"]
    header += [f"fixed {w}" for w in args.omegas]
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    totals = [0] * (len(header) - 3)
    for seed in args.seeds:
        for step, (cost, eps) in capture(seed, args.steps).items():
            chosen = []
            sinkhorn._omega = lambda errors, chosen=chosen: (
                chosen.append(adaptive(errors)) or chosen[-1]
            )
            row = [sinkhorn.sinkhorn_plan(cost, eps, args.cap, tol)[3]]
            sinkhorn._omega, sinkhorn._REESTIMATE = adaptive, 10**9
            row.append(sinkhorn.sinkhorn_plan(cost, eps, args.cap, tol)[3])
            for w in args.omegas:
                sinkhorn._omega = lambda errors, w=w: w
                row.append(sinkhorn.sinkhorn_plan(cost, eps, args.cap, tol)[3])
            sinkhorn._omega, sinkhorn._REESTIMATE = adaptive, every
            totals = [t + r for t, r in zip(totals, row)]
            cells = [seed, step, f"{chosen[0]:.2f}", *row]
            print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    print("| all | | | " + " | ".join(str(t) for t in totals) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
