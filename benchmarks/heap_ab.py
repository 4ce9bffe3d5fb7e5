"""``mst.tl.pretrain`` with and without :func:`maestro_sc._utils.retained_heap`, alternating.

glibc's ``mallopt`` settings last for the life of a process, so every fit runs in its own
Python process: ``--rounds`` times each way, in turn. Each fit trains the ``cpu`` preset on a
synthetic cohort for ``--steps`` steps (2 threads, the step in 2 parts) and reports seconds per
step (the Trainer's start-up included) and the minor page faults of the process during the fit.
Linux with glibc only. Run it on an idle machine.

Example::

    python benchmarks/heap_ab.py --steps 60 --rounds 4   # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys

from _machine import machine

FIT = """
import contextlib, json, resource, sys, torch
import maestro_sc as mst
from maestro_sc.train import runner
torch.set_num_threads({threads})
if not {retain}:
    runner.retained_heap = contextlib.nullcontext
adata = mst.datasets.synthetic_cohort(n_samples={samples}, random_state=0)
kw = dict(preset="cpu", max_epochs=1, min_steps=0, accelerator="cpu", progress=False)
mst.tl.pretrain(adata, "sample", steps_per_epoch=2, random_state=0, **kw)  # first-call costs
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
model = mst.tl.pretrain(adata, "sample", steps_per_epoch={steps}, random_state={seed}, **kw)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
steps = int(model.summary["steps"])
print(json.dumps({{"per_step": float(model.summary["train_seconds"]) / steps,
                  "faults_per_step": faults / steps}}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"# machine: {machine()}")
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for retain in (False, True) if round_ % 2 == 0 else (True, False):
            code = FIT.format(
                threads=args.threads,
                retain=retain,
                samples=args.samples,
                steps=args.steps,
                seed=round_,
            )
            out = subprocess.run(
                [sys.executable, "-c", code], check=True, capture_output=True, text=True
            ).stdout
            record = json.loads(out.strip().splitlines()[-1])
            runs[retain].append(record)
            print(f"round {round_}, retained heap {retain}: {record}", flush=True)
    print("\n| heap | runs x steps | s per step, min | median | page faults per step, median |")
    print("|---|---|---:|---:|---:|")
    for retain, records in runs.items():
        per_step = [r["per_step"] for r in records]
        faults = [r["faults_per_step"] for r in records]
        with contextlib.suppress(statistics.StatisticsError):
            print(
                f"| {'retained' if retain else 'glibc default'} | {len(records)} x {args.steps} "
                f"| {min(per_step):.3f} | {statistics.median(per_step):.3f} "
                f"| {statistics.median(faults):.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
