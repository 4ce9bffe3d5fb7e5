"""``mst.tl.pretrain`` with the step in one batch and in 2 parts, alternating, on 2 threads.

Trains the ``cpu`` preset on a synthetic cohort for ``--steps`` steps with ``step_parts=1`` and
``step_parts=2`` in turn (``--rounds`` times each) and prints the fit's seconds per step from
the trained model's summary (the Lightning loop and the Trainer's start-up included), and the
min and median over the rounds. Run it on an idle machine.

Example::

    python benchmarks/pretrain_parts.py --steps 60 --rounds 3   # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from _machine import machine

import maestro_sc as mst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# machine: {machine()}")
    adata = mst.datasets.synthetic_cohort(n_samples=args.samples, random_state=0)
    per_step: dict[int, list[float]] = {1: [], 2: []}

    def fit(parts: int, steps: int, seed: int):
        return mst.tl.pretrain(
            adata,
            "sample",
            preset="cpu",
            step_parts=parts,
            max_epochs=1,
            steps_per_epoch=steps,
            min_steps=0,
            accelerator="cpu",
            progress=False,
            random_state=seed,
        )

    fit(2, 2, 0)  # imports and first-call costs, not timed
    for round_ in range(args.rounds):
        for parts in (1, 2) if round_ % 2 == 0 else (2, 1):
            model = fit(parts, args.steps, round_)
            seconds = float(model.summary["train_seconds"]) / int(model.summary["steps"])
            per_step[parts].append(seconds)
            print(f"round {round_}, step_parts={parts}: {seconds:.3f} s per step", flush=True)
    print("\n| step_parts | threads | runs x steps | s per step, min | median |")
    print("|---:|---:|---|---:|---:|")
    for parts, values in per_step.items():
        print(
            f"| {parts} | {args.threads} | {len(values)} x {args.steps} | {min(values):.3f} | "
            f"{statistics.median(values):.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
