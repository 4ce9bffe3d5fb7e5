"""CPU embedding cost of one sample against its size, and of a backed h5ad cohort.

For the ``cpu`` preset (untrained weights: the cost does not depend on them) and 30 markers:

1. one sample of 10^4, 10^5 and 10^6 cells, embedded by the streamed teacher encoder
   (``Maestro.encode``): wall time (min and median of ``--repeats``; ``--repeats-large`` runs
   at 10^6), time per cell and its ratio 10^6 / 10^4 (linearity), FLOPs per cell
   (``torch.utils.flop_counter``; matmuls and attention only), achieved GFLOP/s, and the extra
   peak RSS of the encoding (peak RSS of a fresh process, high-water mark reset once the input
   is allocated, minus the RSS then); 10^4 and 10^5 with 2 and 1 torch threads, 10^6 with the
   thread count that was faster at 10^5 (``--large-threads`` to choose);
2. what-ifs at ``--lever-cells`` (10^5): 4,096-cell chunks and ``torch.autocast("cpu",
   bfloat16)``, and both at 10^6, with the embedding's difference to float32;
3. the GEMM rates of this machine on the encoder's skinny shapes and on a square one (float32,
   and bf16 on one shape), which bound what any implementation of the same FLOPs can reach;
4. a backed h5ad of ``--backed-samples`` x ``--backed-cells`` cells x 30 markers written to a
   temporary folder, opened with ``backed="r"`` and embedded by ``mst.tl.embed_samples``: time
   and peak RSS against the file size (``X`` is never loaded; ``obs`` is, by anndata).

Each measurement runs in its own process, so peak RSS is that measurement's. Prints the machine
and a markdown table; ``--json`` appends the raw records. Examples::

    python benchmarks/embed_scaling.py                       # default, ~3 min on 2 cores
    python benchmarks/embed_scaling.py --sizes 10000 --threads 1 --backed-cells 100000
                                                             # the 100 x 100k cohort, ~5 min
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine

N_MARKERS = 30
FLOP_CELLS = 10_000


def _status_mib(key: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) / 1024 if m else None


def reset_peak() -> float:
    """Start a new peak-RSS window; returns the current RSS (MiB).

    Linux resets the high-water mark ``VmHWM`` to the current RSS on ``echo 5 > clear_refs``, so
    a transient peak before (imports, input generation) is not counted. Elsewhere the window is
    the whole process (``ru_maxrss``) and the baseline its peak so far.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mib("VmRSS")
    except OSError:
        return peak_rss_mib()


def peak_rss_mib() -> float:
    """Peak RSS of this process since :func:`reset_peak` (``VmHWM``), or ever (``ru_maxrss``)."""
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_model(seed: int = 0):
    import torch

    from maestro_sc.model.config import preset
    from maestro_sc.model.maestro import Maestro

    torch.manual_seed(seed)
    net = Maestro(preset("cpu", n_markers=N_MARKERS)).eval()
    net.set_scaler(torch.zeros(N_MARKERS), torch.ones(N_MARKERS))
    return net


def cells(n: int, seed: int):
    """Cytometry-like values: a mixture of 12 populations, arcsinh-scale, float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 4, size=(12, N_MARKERS)).astype(np.float32)
    labels = rng.integers(0, 12, size=n)
    x = centers[labels]
    x += rng.standard_normal(x.shape, dtype=np.float32) * 0.5
    return x


# -- workers (each in a fresh process) --------------------------------------------------------


def worker_sample(
    n: int, threads: int, repeats: int, chunk: int | None = None, bf16: bool = False
) -> dict:
    import contextlib

    import torch

    torch.set_num_threads(threads)
    net = build_model()
    net.encode(torch.randn(2000, N_MARKERS))  # warm-up: kernels, allocator
    x = torch.from_numpy(cells(n, seed=1))
    # bf16 matrix products on CPUs that have them (AVX-512 BF16, AMX); the library's encode
    # autocasts on CUDA only, so this is a what-if
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    base = reset_peak()
    times = []
    with cast:
        for _ in range(repeats):
            t = time.perf_counter()
            z = net.encode(x, chunk_size=chunk)
            times.append(time.perf_counter() - t)
    assert torch.isfinite(z).all()
    return {
        "kind": "sample",
        "cells": n,
        "threads": threads,
        "runs": repeats,
        "chunk": chunk or net.config.chunk_size,
        "bf16": bf16,
        "s_min": min(times),
        "s_median": statistics.median(times),
        "extra_rss_mib": peak_rss_mib() - base,
        "input_mib": x.numel() * 4 / 2**20,
        "z": z.tolist(),
    }


def worker_flops() -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = build_model()
    with FlopCounterMode(display=False) as counter:
        net.encode(torch.from_numpy(cells(FLOP_CELLS, seed=1)))
    return {"kind": "flops", "flop_per_cell": counter.get_total_flops() / FLOP_CELLS}


def worker_gemm(threads: int) -> dict:
    """GFLOP/s of the encoder's per-cell GEMMs on one chunk, and of a square GEMM."""
    import torch

    torch.set_num_threads(threads)
    chunk = 16384
    shapes = {
        "chunk x 64 @ 64 x 256 (SwiGLU up)": (chunk, 64, 256, torch.float32),
        "chunk x 128 @ 128 x 64 (SwiGLU down)": (chunk, 128, 64, torch.float32),
        "chunk x 64 @ 64 x 128 (K,V proj)": (chunk, 64, 128, torch.float32),
        "1024 x 1024 @ 1024 x 1024": (1024, 1024, 1024, torch.float32),
        "bf16 chunk x 64 @ 64 x 256": (chunk, 64, 256, torch.bfloat16),
    }
    out = {}
    for name, (m, k, n, dtype) in shapes.items():
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b
        reps = max(3, int(2e9 / (2 * m * k * n)))
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = min(best, (time.perf_counter() - t) / reps)
        out[name] = 2 * m * k * n / best / 1e9
    return {"kind": "gemm", "threads": threads, "gflops": out}


def worker_backed(path: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    import anndata as ad

    import maestro_sc as mst
    from maestro_sc.tl import MaestroModel

    net = build_model()
    net.encode(torch.randn(2000, N_MARKERS))
    model = MaestroModel(net, [f"m{j}" for j in range(N_MARKERS)], summary={"preset": "cpu"})
    base = reset_peak()
    t = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r")
    # anndata keeps obs (names, sample column) in memory in backed mode; only X stays on disk
    opened = reset_peak()
    open_peak = max(opened, peak_rss_mib())
    sdata = mst.tl.embed_samples(
        adata, "sample", model=model, neighbors=False, umap=False, progress=False
    )
    elapsed = time.perf_counter() - t
    assert adata.isbacked and sdata.obsm["X_maestro"].shape[0] == adata.obs["sample"].nunique()
    return {
        "kind": "backed",
        "threads": threads,
        "s": elapsed,
        "cells": int(adata.n_obs),
        "samples": int(sdata.n_obs),
        "base_rss_mib": base,
        "open_rss_mib": opened - base,
        "open_peak_mib": open_peak - base,
        "embed_extra_rss_mib": peak_rss_mib() - opened,
        "file_mib": os.path.getsize(path) / 2**20,
        "x_mib": adata.n_obs * adata.n_vars * 4 / 2**20,
    }


def write_backed(path: Path, n_samples: int, n_cells: int) -> float:
    """Write the cohort sample by sample (cells contiguous per sample, as after concatenating
    FCS files); returns seconds. The writing process never holds more than one sample."""
    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd

    t = time.perf_counter()
    n = n_samples * n_cells
    obs = pd.DataFrame(
        {"sample": pd.Categorical(np.repeat([f"s{i:03d}" for i in range(n_samples)], n_cells))},
        index=pd.RangeIndex(n).astype(str),
    )
    var = pd.DataFrame(index=[f"m{j}" for j in range(N_MARKERS)])
    # obs/var by anndata, then X added and filled sample by sample with h5py
    shell = ad.AnnData(obs=obs, var=var)
    shell.write_h5ad(path)
    with h5py.File(path, "a") as f:
        f.create_dataset(
            "X", shape=(n, N_MARKERS), dtype="float32", chunks=(min(n_cells, 16384), N_MARKERS)
        )
        f["X"].attrs["encoding-type"] = "array"
        f["X"].attrs["encoding-version"] = "0.2.0"
        for i in range(n_samples):
            f["X"][i * n_cells : (i + 1) * n_cells] = cells(n_cells, seed=100 + i)
    return time.perf_counter() - t


def plot(rows: list[dict], path: str, title: str) -> None:
    """Time and extra peak RSS against cells per sample, one line per thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for th in sorted({r["threads"] for r in rows}):
        sel = sorted((r for r in rows if r["threads"] == th), key=lambda r: r["cells"])
        n = [r["cells"] for r in sel]
        ax_t.plot(n, [r["s_min"] for r in sel], "o-", label=f"{th} torch thread{'s' * (th > 1)}")
        ax_m.plot(
            n, [r["extra_rss_mib"] for r in sel], "o-", label=f"{th} torch thread{'s' * (th > 1)}"
        )
    n = sorted({r["cells"] for r in rows})
    first = min(rows, key=lambda r: (r["cells"], r["s_min"]))
    ax_t.plot(
        n,
        [first["s_min"] * c / first["cells"] for c in n],
        ":",
        color="grey",
        label="linear from the fastest 10^4 run",
    )
    ax_t.scatter([1e6], [5], marker="*", s=150, color="red", zorder=3, label="target: 10^6 in 5 s")
    ax_t.set(
        xscale="log",
        yscale="log",
        xlabel="cells per sample",
        ylabel="embedding time (s), min",
        title="Time",
    )
    ax_m.plot(
        n, [c * N_MARKERS * 4 / 2**20 for c in n], ":", color="grey", label="input size (float32)"
    )
    ax_m.axhline(1024, color="red", ls="--", label="target: 1 GiB extra")
    ax_m.set(
        xscale="log",
        yscale="log",
        xlabel="cells per sample",
        ylabel="extra peak RSS (MiB)",
        title="Peak memory",
    )
    ax_t.legend(loc="upper left", fontsize=8)
    ax_m.legend(loc="lower right", fontsize=8)
    for ax in (ax_t, ax_m):
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def levers(args, rows: list[dict], records: list[dict]) -> None:
    """Smaller chunks and bf16 autocast at ``--lever-cells`` (and bf16 at 10^6): what-ifs."""
    import numpy as np

    n = args.lever_cells
    ref_rows = [r for r in rows if r["cells"] == n]
    th = min(ref_rows, key=lambda r: r["s_min"])["threads"] if ref_rows else 1
    print(f"\nlevers at {n:,} cells, {th} thread(s) (what-ifs; the library runs float32 on CPU):")
    print(
        "| cells | chunk | precision | time min (s) | median (s) | µs / cell "
        "| extra peak RSS (MiB) | embedding rel. diff vs float32 |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    configs = [(n, c, p) for p in ("fp32", "bf16") for c in (16384, 4096)]
    configs.append((1_000_000, 4096, "bf16"))
    ref = {}
    for cells_n, chunk, prec in configs:
        if cells_n > max(int(float(s)) for s in args.sizes.split(",")):
            continue
        reps = args.repeats_large if cells_n >= 1_000_000 else args.repeats
        rec = run_worker(["sample", str(cells_n), str(th), str(reps), str(chunk), prec])
        records.append(rec)
        z = np.asarray(rec["z"])
        if (cells_n, "fp32") not in ref and prec == "fp32":
            ref[(cells_n, "fp32")] = z
        base = ref.get((cells_n, "fp32"))
        if base is None:
            same = [r for r in rows if r["cells"] == cells_n and r["threads"] == th]
            base = np.asarray(same[0]["z"]) if same else None
        diff = "—" if base is None else f"{np.linalg.norm(z - base) / np.linalg.norm(base):.1e}"
        print(
            f"| {cells_n:,} | {chunk} | {prec} | {rec['s_min']:.2f} | {rec['s_median']:.2f} "
            f"| {rec['s_min'] / cells_n * 1e6:.1f} | {rec['extra_rss_mib']:.0f} | {diff} |",
            flush=True,
        )


def run_worker(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeats-large", type=int, default=2, help="runs at >= 10^6 cells")
    parser.add_argument(
        "--large-threads",
        default="auto",
        help="threads at >= 10^6 cells: 'auto' (faster at the next size), "
        "'all' (every --threads), or a number",
    )
    parser.add_argument("--threads", default="2,1", help="torch thread counts to compare")
    parser.add_argument(
        "--backed-threads",
        type=int,
        default=None,
        help="threads for the backed run (default: the fastest at the largest size)",
    )
    parser.add_argument(
        "--lever-cells",
        type=int,
        default=100_000,
        help="cells for the chunk-size / bf16 what-ifs (0: skip)",
    )
    parser.add_argument("--backed-samples", type=int, default=100)
    parser.add_argument("--backed-cells", type=int, default=20_000)
    parser.add_argument("--no-backed", action="store_true")
    parser.add_argument("--json", default=None, help="append the records to this file")
    parser.add_argument("--plot", default=None, help="write the time/memory plot (PNG) here")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, *rest = args.worker
        if kind == "sample":
            chunk = int(rest[3]) if len(rest) > 3 and rest[3] != "0" else None
            bf16 = len(rest) > 4 and rest[4] == "bf16"
            rec = worker_sample(int(rest[0]), int(rest[1]), int(rest[2]), chunk, bf16)
        elif kind == "flops":
            rec = worker_flops()
        elif kind == "gemm":
            rec = worker_gemm(int(rest[0]))
        else:
            rec = worker_backed(rest[0], int(rest[1]))
        print(json.dumps(rec))
        return 0

    import torch

    torch.set_num_threads(max(int(t) for t in args.threads.split(",")))
    print(f"# machine: {machine()}")
    from maestro_sc.model.config import preset

    cfg = preset("cpu", n_markers=N_MARKERS)
    print(
        f"# model: cpu preset (D={cfg.latent_dim}, ff={cfg.ff_dim}, m={cfg.n_inducing}, "
        f"3 ISAB + PMA), {N_MARKERS} markers, untrained, streamed teacher encoder, "
        f"chunk {cfg.chunk_size} unless a row says otherwise"
    )
    records = []
    flops = run_worker(["flops"])
    records.append(flops)
    fpc = flops["flop_per_cell"]
    print(
        f"\nFLOPs per cell (matmul + attention, {FLOP_CELLS} cells): {fpc / 1e3:.1f} kFLOP "
        f"-> {fpc * 1e6 / 1e9:.0f} GFLOP per 10^6 cells"
    )

    sizes = [int(float(s)) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    for n in sizes:
        use = threads
        if n >= 1_000_000 and args.large_threads != "all":
            if args.large_threads == "auto":
                smaller = [r for r in rows if r["cells"] < n]
                use = (
                    [min(smaller, key=lambda r: (-r["cells"], r["s_min"]))["threads"]]
                    if smaller
                    else threads[:1]
                )
            else:
                use = [int(args.large_threads)]
        for th in use:
            reps = args.repeats_large if n >= 1_000_000 else args.repeats
            rec = run_worker(["sample", str(n), str(th), str(reps)])
            records.append(rec)
            rows.append(rec)
            print(
                f"  {n:>9,} cells, {th} threads: {rec['s_min']:.2f} s (min of {reps})", flush=True
            )
    rows.sort(key=lambda r: (-r["threads"], r["cells"]))

    print(
        "\n| cells | threads | runs | time min (s) | median (s) | µs / cell | GFLOP/s "
        "| extra peak RSS (MiB) | input (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        n = r["cells"]
        print(
            f"| {n:,} | {r['threads']} | {r['runs']} | {r['s_min']:.2f} | {r['s_median']:.2f} "
            f"| {r['s_min'] / n * 1e6:.1f} | {fpc * n / r['s_min'] / 1e9:.1f} "
            f"| {r['extra_rss_mib']:.0f} | {r['input_mib']:.0f} |"
        )
    for th in threads:
        per = {r["cells"]: r["s_min"] / r["cells"] for r in rows if r["threads"] == th}
        if len(per) > 1:
            lo, hi = min(per), max(per)
            print(
                f"linearity ({th} threads): time per cell at {hi:,} / at {lo:,} = "
                f"{per[hi] / per[lo]:.2f}"
            )
    big = [r for r in rows if r["cells"] >= 1_000_000]
    if big:
        r = min(big, key=lambda r: r["s_min"])
        print(
            f"target 10^6 cells <= 5 s, <= 1024 MiB extra: {r['s_min'] / r['cells'] * 1e6:.1f} s, "
            f"{r['extra_rss_mib']:.0f} MiB"
        )

    if args.plot:
        where = re.sub(r", \d+ threads", "", machine().split(" | ", 1)[1])
        plot(rows, args.plot, f"maestro_sc cpu preset, 30 markers, streamed encoder — {where}")

    if args.lever_cells:
        levers(args, rows, records)

    print("\nGEMM rate on this machine (GFLOP/s, best of 3):")
    for th in threads:
        g = run_worker(["gemm", str(th)])
        records.append(g)
        print(f"  {th} threads: " + "; ".join(f"{k}: {v:.1f}" for k, v in g["gflops"].items()))
        fp32 = {k: v for k, v in g["gflops"].items() if not k.startswith("bf16")}
        skinny = min(v for k, v in fp32.items() if k.startswith("chunk"))
        print(
            f"    -> 10^6 cells at the slowest skinny rate: >= {fpc * 1e6 / skinny / 1e9:.1f} s;"
            f" at the square rate: >= {fpc * 1e6 / max(fp32.values()) / 1e9:.1f} s"
        )

    if not args.no_backed:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "cohort.h5ad"
            w = write_backed(path, args.backed_samples, args.backed_cells)
            print(
                f"\nbacked cohort: {args.backed_samples} samples x {args.backed_cells:,} cells x "
                f"{N_MARKERS} markers, written in {w:.0f} s"
            )
            th = args.backed_threads
            if th is None:
                largest = [r for r in rows if r["cells"] == max(sizes)]
                th = min(largest, key=lambda r: r["s_min"])["threads"]
            rec = run_worker(["backed", str(path), str(th)])
            records.append(rec)
            print(
                "| cells | samples | threads | time (s) | µs / cell | file (MiB) | X (MiB) "
                "| RSS of opening: obs in memory (MiB) | extra peak RSS of embedding (MiB) |"
            )
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            print(
                f"| {rec['cells']:,} | {rec['samples']} | {rec['threads']} | {rec['s']:.1f} "
                f"| {rec['s'] / rec['cells'] * 1e6:.1f} | {rec['file_mib']:.0f} "
                f"| {rec['x_mib']:.0f} | {rec['open_rss_mib']:.0f} "
                f"(peak {rec['open_peak_mib']:.0f}) | {rec['embed_extra_rss_mib']:.0f} |"
            )
            per_cell = rec["open_rss_mib"] * 2**20 / rec["cells"]
            full = args.backed_samples * 100_000
            print(
                f"opening costs {per_cell:.0f} bytes per cell (obs); the embedding's own extra "
                f"memory is bounded by one sample ({args.backed_cells:,} cells). For "
                f"{args.backed_samples} x 100,000 cells expect ~{per_cell * full / 2**20:.0f} MiB "
                "for obs and ~the 10^5 single-sample row above for the embedding; time "
                f"~{rec['s'] / rec['cells'] * full:.0f} s at this rate."
            )
    if args.json:
        with open(args.json, "a") as f:
            for rec in records:
                f.write(json.dumps({"machine": machine(), **rec}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
