"""The ``cpu`` preset's training step in one batch and in 2 parts, alternating in one process.

Drives the step by hand as ``train_profile.py`` does (synthetic 40-sample cohort, teacher on
every cell, AdamW, EMA) and switches ``config.step_parts`` between 1 and 2 on every step, so a
drift of the machine's speed slows both alike. Prints min and median over ``--pairs`` pairs
(after 2 untimed pairs).

``--half`` instead times one part alone: the forward and backward of 4 of the 8 samples on one
thread, in one batch, for ``--seconds``. Two such processes started together show what two
parts cost side by side without sharing Python's interpreter lock.

Example::

    python benchmarks/step_parts_ab.py --pairs 40     # ~40 s on 2 cores
    python benchmarks/step_parts_ab.py --half & python benchmarks/step_parts_ab.py --half
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _machine import machine
from train_profile import batches, make_step, pretrain_heap, setup


def alternate(pairs: int, threads: int) -> None:
    torch.set_num_threads(threads)
    _, _, net, dataset = setup(40, 0)
    net.train()
    step = make_step(net, batches(dataset, net.config, 0), 0)
    times: dict[int, list[float]] = {1: [], 2: []}
    for i in range(pairs + 2):
        for parts in (1, 2) if i % 2 == 0 else (2, 1):
            net.config.step_parts = parts
            seconds = step()["step"]
            if i >= 2:
                times[parts].append(seconds)
    print("| step_parts | threads | steps | step min (s) | step median (s) |")
    print("|---:|---:|---:|---:|---:|")
    for parts, values in times.items():
        print(
            f"| {parts} | {threads} | {len(values)} | {min(values):.3f} | "
            f"{statistics.median(values):.3f} |"
        )


def half(seconds: float) -> None:
    torch.set_num_threads(1)
    _, _, net, dataset = setup(40, 0)
    net.train()
    net.config.step_parts = 1
    data = batches(dataset, net.config, 0)
    params = [p for p in net.parameters() if p.requires_grad]
    times, i, end = [], 0, time.time() + seconds
    while time.time() < end:
        students, teachers = next(data)
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(i)
        out = net.training_loss(students[:4], teachers[:4], generator=gen)
        torch.autograd.grad(out["loss"], params, allow_unused=True)
        times.append(time.perf_counter() - start)
        i += 1
    times = times[2:]
    print(
        f"4 samples, 1 thread: {len(times)} steps, min {min(times):.3f} s, "
        f"median {statistics.median(times):.3f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--half", action="store_true", help="time one part alone, 1 thread")
    parser.add_argument("--seconds", type=float, default=25.0)
    args = parser.parse_args(argv)
    pretrain_heap()
    print(f"# machine: {machine()}")
    if args.half:
        half(args.seconds)
    else:
        alternate(args.pairs, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
