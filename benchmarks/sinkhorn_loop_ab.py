"""The training step with the Sinkhorn loss of an older commit and of the current code, alternating.

Loads ``src/maestro_sc/model/sinkhorn.py`` as it was at ``--rev`` (``git show``) beside the
current module and drives the ``cpu`` preset's step by hand as ``train_profile.py`` does
(synthetic 40-sample cohort, teacher on every cell, AdamW, EMA), switching the loss the model
calls on every step, so a drift of the machine's speed slows both alike. ``--warmup 150`` first
trains 150 steps, where the Sinkhorn loss runs to its iteration cap. Prints min and median per
version, the Sinkhorn iterations per step, and the time spent inside the Sinkhorn loss per step
(each part's call, summed over the parts: with 2 parts in threads, the two calls overlap).

Example::

    python benchmarks/sinkhorn_loop_ab.py --rev f5e44dc --pairs 30             # early steps
    python benchmarks/sinkhorn_loop_ab.py --rev f5e44dc --pairs 20 --warmup 150
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import machine
from train_profile import batches, make_step, pretrain_heap, setup

import maestro_sc.model.maestro as maestro_module
from maestro_sc.model import sinkhorn as current

ROOT = Path(__file__).resolve().parents[1]


def module_at(rev: str):
    """``maestro_sc.model.sinkhorn`` as it was at commit ``rev``, as a separate module."""
    text = subprocess.run(
        ["git", "show", f"{rev}:src/maestro_sc/model/sinkhorn.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "sinkhorn_old.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("sinkhorn_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", required=True, help="the commit whose Sinkhorn loss to compare")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    pretrain_heap()
    print(f"# machine: {machine()}")
    torch.set_num_threads(args.threads)
    inside: list[float] = []

    def timed(fn):
        def call(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                inside.append(time.perf_counter() - start)

        return call

    versions = {
        args.rev: timed(module_at(args.rev).sinkhorn_cost),
        "current": timed(current.sinkhorn_cost),
    }
    _, _, net, dataset = setup(40, 0)
    net.train()
    step = make_step(net, batches(dataset, net.config, 0), 0)
    for _ in range(args.warmup):
        step()
    times: dict[str, list[float]] = {name: [] for name in versions}
    iters: dict[str, list[float]] = {name: [] for name in versions}
    loss: dict[str, list[float]] = {name: [] for name in versions}
    order = list(versions)
    for i in range(args.pairs):
        for name in order if i % 2 == 0 else order[::-1]:
            maestro_module.sinkhorn_cost = versions[name]
            inside.clear()
            out = step()
            loss[name].append(sum(inside))
            times[name].append(out["step"])
            iters[name].append(out["ot_iters"])
    maestro_module.sinkhorn_cost = current.sinkhorn_cost
    print(f"after {args.warmup} untimed steps, {args.threads} threads:")
    print(
        "| Sinkhorn loss of | steps | step min (s) | step median (s) | iterations per step "
        "| in the loss, median (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in versions:
        values = times[name]
        print(
            f"| {name} | {len(values)} | {min(values):.3f} | {statistics.median(values):.3f} | "
            f"{statistics.mean(iters[name]):.0f} | {1e3 * statistics.median(loss[name]):.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
