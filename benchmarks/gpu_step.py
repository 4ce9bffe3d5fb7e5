"""Training-step and embedding cost on one GPU (or, with ``--small``, a CPU smoke run).

Measures, for the ``paper`` preset (D=1024, ff 2048, m=2500, 10k-cell student x 4 NRBM views,
teacher over 10^6 cells): one full training step (forward, backward, AdamW, EMA update) with
bf16 autocast, its peak GPU memory and its FLOPs (PyTorch's FLOP counter) as a fraction of the
GPU's dense bf16 peak; then the teacher alone on 10^6 cells, and the ``gpu``/``cpu`` presets'
step and 10^6-cell embedding. Needs only torch and ``maestro_sc.model`` (no AnnData stack)::

    PYTHONPATH=src python benchmarks/gpu_step.py            # on a GPU machine
    PYTHONPATH=src python benchmarks/gpu_step.py --small    # CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from maestro_sc.model.config import preset
from maestro_sc.model.maestro import Maestro

#: Dense bf16 peak of an H100/H200 SXM (no sparsity), FLOP/s.
HOPPER_BF16_PEAK = 989e12


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def step_benchmark(name, n_sub, n_teacher, d, device, repeats, dtype, **overrides):
    cfg = preset(name, n_markers=d, n_sub=n_sub, dtype=dtype, **overrides)
    net = Maestro(cfg).to(device)
    net.set_scaler(torch.zeros(d, device=device), torch.ones(d, device=device))
    try:  # as pretrain builds it (needs pytorch-lightning); bf16 autocast keeps AdamW unfused
        from maestro_sc.train.module import make_optimizer

        opt = make_optimizer(net, fused=dtype != "bfloat16")
    except ImportError:
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr)
    students = torch.randn(cfg.batch_size, n_sub, d, device=device)
    teachers = [torch.randn(n_teacher, d, device=device) for _ in range(cfg.batch_size)]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and dtype == "bfloat16"
        else torch.autocast("cpu", enabled=False)
    )

    def step():
        with autocast:
            out = net.training_loss(students, teachers)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        net.update_teacher(cfg.ema_momentum)
        return out

    step()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best, median = timed(step, device, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()

    def teacher_only():
        with torch.no_grad(), autocast:
            net.encode(teachers[0], which="teacher")

    t_best, t_median = timed(teacher_only, device, repeats)
    n_params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    result = {
        "preset": name,
        "n_sub": n_sub,
        "views": len(cfg.mask_rates),
        "batch": cfg.batch_size,
        "teacher_cells": n_teacher,
        "teacher_max_cells": cfg.teacher_max_cells,
        "markers": d,
        "params": n_params,
        "step_s_min": round(best, 4),
        "step_s_median": round(median, 4),
        "peak_gib": round(peak, 2),
        "step_tflop": round(flops / 1e12, 3),
        "achieved_tflops": round(flops / best / 1e12, 1),
        "frac_bf16_peak": round(flops / best / HOPPER_BF16_PEAK, 3)
        if device.type == "cuda"
        else None,
        "teacher_embed_s_min": round(t_best, 4),
        "teacher_embed_s_median": round(t_median, 4),
        "teacher_gflop_per_1k_cells": None,
    }
    with FlopCounterMode(display=False) as counter:
        teacher_only()
    result["teacher_gflop_per_1k_cells"] = round(
        counter.get_total_flops() / n_teacher * 1e3 / 1e9, 3
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=None, help="run one preset only")
    parser.add_argument(
        "--teacher-max-cells",
        type=int,
        default=None,
        help="cap the teacher's cells (default: all 10^6, streamed)",
    )
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    print(f"# device: {name} | torch {torch.__version__} | {time.strftime('%Y-%m-%d %H:%M')}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    runs = [
        ("paper", 10_000, 1_000_000, {}),
        ("gpu", 4096, 1_000_000, {}),
        ("cpu", 256, 1_000_000, {"batch_size": 8}),
    ]
    if args.small:
        runs = [
            (
                "paper",
                64,
                2000,
                {
                    "latent_dim": 32,
                    "ff_dim": 64,
                    "n_inducing": 16,
                    "head_hidden": 64,
                    "head_bottleneck": 16,
                },
            ),
            ("cpu", 64, 2000, {"batch_size": 2}),
        ]
    for preset_name, n_sub, n_teacher, extra in runs:
        if args.only and preset_name != args.only:
            continue
        try:
            if args.teacher_max_cells:
                extra = {**extra, "teacher_max_cells": args.teacher_max_cells}
            res = step_benchmark(
                preset_name, n_sub, n_teacher, 30, device, args.repeats, "bfloat16", **extra
            )
        except torch.cuda.OutOfMemoryError as err:  # report, keep going
            res = {"preset": preset_name, "error": f"OOM: {err}"[:300]}
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
