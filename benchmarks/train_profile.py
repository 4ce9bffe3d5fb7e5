"""Training throughput of the ``cpu`` preset on CPU, and where the time of a step goes.

Drives the training step by hand, as the Lightning plan does (``maestro_sc.train``): the
sample-set dataset, sampler and collate of ``train.data`` reading the synthetic cohort
(``mst.datasets.synthetic_cohort(n_samples=40)``: 24 markers, 500-3,000 cells per sample, the
teacher sees every cell), ``Maestro.training_loss``, backward, gradient clipping, AdamW and the
EMA teacher update. Reports:

- samples/s of the step (``batch_size`` samples per step; min and median over ``--steps``);
- the share of each part from ``torch.profiler``, with ``record_function`` labels put around
  the model's parts by wrapping them in this script (the library is not modified): data loading
  (dataset ``__getitem__`` + collate), masking, student encoder, decoder, Sinkhorn, distillation
  (student projection head + loss), teacher (encoder + head, no grad), backward, optimiser
  (clip + AdamW), EMA update. Backward is one block: autograd runs it after the forward labels
  have closed;
- for comparison, the same training through ``mst.tl.pretrain`` (Lightning), seconds per step.

Example::

    python benchmarks/train_profile.py               # ~1-2 min on 2 cores
    python benchmarks/train_profile.py --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time

import torch
from _machine import machine

import maestro_sc as mst
import maestro_sc.model.maestro as maestro_module
from maestro_sc._data import SampleIndex
from maestro_sc.model.config import preset
from maestro_sc.model.maestro import Maestro
from maestro_sc.tl._embed import marker_scaler
from maestro_sc.train.data import EpochSampler, SampleSetDataset, collate_sets

try:
    from maestro_sc.train.module import make_optimizer
except ImportError:  # older code under comparison (before/after runs): its plain AdamW
    make_optimizer = None

PARTS = (
    "data loading",
    "masking",
    "student encoder",
    "decoder",
    "sinkhorn",
    "distillation (head + loss)",
    "teacher (encoder + head)",
    "backward",
    "optimizer (clip + AdamW)",
    "EMA update",
)


_HEAP = contextlib.ExitStack()


def pretrain_heap() -> None:
    """Train under the heap settings of ``mst.tl.pretrain`` for the rest of this process.

    ``maestro_sc._utils.retained_heap`` where the code under test has it (older code, in the
    before/after runs, trains with glibc's defaults, as its ``pretrain`` did).
    """
    try:
        from maestro_sc._utils import retained_heap
    except ImportError:
        return
    _HEAP.enter_context(retained_heap())


def labelled(fn, label: str):
    """``fn`` run inside a profiler range named ``label``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)

    return wrapper


def label_parts(net: Maestro) -> None:
    """Put profiler labels around the model's parts (instance and module attributes only)."""
    net.encoder.forward = labelled(net.encoder.forward, "student encoder")
    net.decoder.forward = labelled(net.decoder.forward, "decoder")
    net.head.forward = labelled(net.head.forward, "distillation (head + loss)")
    # the teacher pass was ``_teacher_logits`` in version 0.1.0 (before/after runs)
    for name in ("_teacher_forward", "_teacher_logits"):
        if hasattr(net, name):
            setattr(net, name, labelled(getattr(net, name), "teacher (encoder + head)"))
    for name, label in (
        ("sinkhorn_cost", "sinkhorn"),
        ("multi_rate_masks", "masking"),
        ("distillation_loss", "distillation (head + loss)"),
    ):
        setattr(maestro_module, name, labelled(getattr(maestro_module, name), label))


def setup(n_samples: int, seed: int, preset_name: str = "cpu", **overrides):
    adata = mst.datasets.synthetic_cohort(n_samples=n_samples, random_state=seed)
    index = SampleIndex(adata, "sample")
    samples = list(range(index.n_samples))
    cfg = preset(preset_name, n_markers=index.n_markers, **overrides)
    torch.manual_seed(seed)
    net = Maestro(cfg)
    mean, std = marker_scaler(index, samples, seed)
    net.set_scaler(torch.from_numpy(mean), torch.from_numpy(std))
    dataset = SampleSetDataset(index, samples, cfg.n_sub, cfg.teacher_max_cells, seed)
    return adata, index, net, dataset


def batches(dataset, cfg, seed: int):
    """Endless batches, epoch after epoch, as the DataLoader of ``pretrain`` yields them."""
    from torch.utils.data import DataLoader

    sampler = EpochSampler(len(dataset), len(dataset), seed)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            collate_fn=collate_sets,
            num_workers=0,
            drop_last=True,
        )
        yield from loader
        epoch += 1


def make_step(net: Maestro, data, seed: int, fused: bool = True):
    cfg = net.config
    params = [p for p in net.parameters() if p.requires_grad]
    if make_optimizer is None:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = make_optimizer(net, fused=fused)
    state = {"step": 0}

    def step() -> dict:
        timings = {}
        t0 = time.perf_counter()
        with torch.profiler.record_function("data loading"):
            students, teachers = next(data)
        t1 = time.perf_counter()
        generator = torch.Generator().manual_seed(seed * 1_000_003 + state["step"])
        out = net.training_loss(students, teachers, generator=generator)
        opt.zero_grad(set_to_none=True)
        with torch.profiler.record_function("backward"):
            out["loss"].backward()
        with torch.profiler.record_function("optimizer (clip + AdamW)"):
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
        with torch.profiler.record_function("EMA update"):
            net.update_teacher(cfg.ema_momentum)
        state["step"] += 1
        timings["data"] = t1 - t0
        timings["step"] = time.perf_counter() - t0
        timings["ot_iters"] = float(out["ot_iters"])
        return timings

    return step


def profile_parts(step, n_steps: int) -> dict:
    """Share of each part of the step, from ``torch.profiler`` over ``n_steps`` steps."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        prof_runs = [step() for _ in range(n_steps)]
    total_us = sum(r["step"] for r in prof_runs) * 1e6
    events = {e.key: e for e in prof.key_averages()}
    shares = {}
    for part in PARTS:
        e = events.get(part)
        shares[part] = (e.cpu_time_total if e is not None else 0.0) / total_us
    shares["other (loss glue, python)"] = max(0.0, 1 - sum(shares.values()))
    print(
        f"\nprofile of {n_steps} steps ({total_us / 1e6 / n_steps:.3f} s "
        "per step under the profiler):"
    )
    print("| part | share of step | ms per step |")
    print("|---|---:|---:|")
    for part, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {100 * share:.1f} % | {share * total_us / 1e3 / n_steps:.0f} |")
    slowest = max((p for p in shares if p in PARTS), key=shares.get)
    print(
        f"slowest part: {slowest}; data loading {100 * shares['data loading']:.1f} % "
        f"({'not ' if shares['data loading'] < 0.1 else ''}a bottleneck)"
    )
    return shares


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=40, help="samples in the cohort")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (no profiler)")
    parser.add_argument("--profile-steps", type=int, default=5, help="0: no profile")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        default=10,
        help="steps of mst.tl.pretrain (one epoch) for comparison (0: skip)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--preset", default="cpu", choices=["cpu", "gpu", "paper"], help="model preset"
    )
    parser.add_argument(
        "--set",
        default="{}",
        help="JSON of MaestroConfig overrides, e.g. '{\"w_con\": 1.0}'",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="append the record to this file")
    parser.add_argument("--label", default="", help="a name for the record (--json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pretrain_heap()
    print(f"# machine: {machine()}")
    print(f"# code: {mst.__file__}")
    adata, index, net, dataset = setup(args.samples, args.seed, args.preset, **json.loads(args.set))
    cfg = net.config
    net.train()
    print(
        f"# {args.preset} preset {args.set}: D={cfg.latent_dim}, ff={cfg.ff_dim}, m={cfg.n_inducing}, "
        f"n_sub={cfg.n_sub}, {len(cfg.mask_rates)} views, batch {cfg.batch_size} samples, "
        f"decoder {cfg.decoder}/{cfg.decoder_block}; cohort {index.n_samples} samples x "
        f"{index.n_markers} markers, {int(index.counts.mean())} cells per sample on average"
    )
    label_parts(net)
    step = make_step(net, batches(dataset, cfg, args.seed), args.seed)
    for _ in range(args.warmup):
        step()

    runs = [step() for _ in range(args.steps)]
    step_s = [r["step"] for r in runs]
    data_share = sum(r["data"] for r in runs) / sum(step_s)
    best, median = min(step_s), statistics.median(step_s)
    print(
        f"\nstep (no profiler), {args.steps} steps: min {best:.3f} s, median {median:.3f} s -> "
        f"{cfg.batch_size / best:.1f} samples/s (best), {cfg.batch_size / median:.1f} "
        f"samples/s (median); data loading {100 * data_share:.1f} % of the step time; "
        f"Sinkhorn iterations per step {statistics.mean(r['ot_iters'] for r in runs):.0f} "
        f"(cap {cfg.ot_max_iter})"
    )

    shares = profile_parts(step, args.profile_steps) if args.profile_steps else {}
    record = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "batch": cfg.batch_size,
        "label": args.label,
        "step_s": step_s,
        "step_s_min": best,
        "step_s_median": median,
        "samples_per_s_best": cfg.batch_size / best,
        "samples_per_s_median": cfg.batch_size / median,
        "data_share_unprofiled": data_share,
        "shares": shares,
        "ot_iters_mean": statistics.mean(r["ot_iters"] for r in runs),
    }
    if args.pretrain_steps:
        model = mst.tl.pretrain(
            adata,
            "sample",
            preset=args.preset,
            **json.loads(args.set),
            max_epochs=1,
            steps_per_epoch=args.pretrain_steps,
            accelerator="cpu",
            progress=False,
            random_state=args.seed,
        )
        steps = int(model.summary["steps"])
        sec = float(model.summary["train_seconds"])
        record["pretrain_s_per_step"] = sec / steps
        print(
            f"\nmst.tl.pretrain (Lightning), {steps} steps: "
            f"{sec:.1f} s, {sec / steps:.3f} s per step, {cfg.batch_size * steps / sec:.1f} "
            "samples/s (includes Trainer start-up)"
        )
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
