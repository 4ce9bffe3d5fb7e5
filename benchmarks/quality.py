"""Representation quality: MAESTRO (trained and untrained) against the baselines.

For one data set, trains MAESTRO with a preset (plus ``--set key=value`` overrides), embeds with
the teacher and the student, scores the untrained encoder as a control, builds the baselines
(means, quantiles, k-means 32/128 proportions and log-ratio k-means 32/128, FlowSOM, gated
proportions where a gating exists) and evaluates all with the paper's protocol (linear probe, nearest-neighbour agreement,
cell-type proportion retrieval). Prints the machine, a markdown table and appends one JSON line
per representation to ``--out``.

Examples::

    python benchmarks/quality.py --data synthetic-easy
    python benchmarks/quality.py --data activation --set readout=pma+mass --tag mass
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from evaluate import evaluate_representations, to_markdown

import maestro_sc as mst

#: Per data set: targets, CV grouping, samples to exclude, gating and batch columns.
DATASETS = {
    "synthetic-easy": dict(
        targets={"diagnosis": "classification", "age": "regression"},
        cell_type_key="cell_type",
        batch_key="batch",
    ),
    "synthetic-hard": dict(
        targets={"diagnosis": "classification", "age": "regression"},
        cell_type_key="cell_type",
        batch_key="batch",
    ),
    "activation": dict(
        name="cytoexplorer_activation",
        targets={"OVA_Conc": "classification", "Treatment": "classification"},
        exclude="sample_type != 'sample'",
        cell_type_key="cell_type",
    ),
    "bcrxl": dict(
        name="bodenmiller_bcrxl_catalyst",
        targets={"condition": "classification"},
        groups="patient_id",
    ),
    "aml": dict(name="cytodx_flowcap2_aml", targets={"label": "classification"}),
    "itn": dict(name="itn_flowstats", targets={"GroupID": "classification"}, batch_key="SiteCode"),
}


def load(data: str, n_samples: int, seed: int):
    spec = DATASETS[data]
    if data.startswith("synthetic"):
        difficulty = data.split("-")[1]
        adata = mst.datasets.synthetic_cohort(
            n_samples=n_samples, difficulty=difficulty, random_state=seed
        )
        return adata, "sample"
    adata = mst.datasets.read_shared(spec["name"])
    adata = mst.datasets.preprocess_shared(adata, spec["name"])
    return adata, "sample"


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=list(DATASETS), default="synthetic-easy")
    parser.add_argument("--n-samples", type=int, default=120, help="synthetic cohorts only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    parser.add_argument("--tag", default="default")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--n-repeats", type=int, default=10)
    parser.add_argument(
        "--normalize-batches",
        action="store_true",
        help="apply mst.pp.normalize_batches on the data set's batch column first (all methods)",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "quality.jsonl"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    spec = DATASETS[args.data]
    adata, sample_key = load(args.data, args.n_samples, args.seed)
    overrides = parse_overrides(args.set)
    if args.normalize_batches:
        if not spec.get("batch_key"):
            parser.error(f"{args.data} has no batch column to normalise")
        mst.pp.normalize_batches(adata, spec["batch_key"])
    print(
        f"# {args.data}: {adata.n_obs:,} cells x {adata.n_vars} markers, "
        f"{adata.obs[sample_key].nunique()} samples | preset {args.preset} {overrides}"
        f"{' | batches normalised' if args.normalize_batches else ''}"
    )
    print(f"# machine: {machine()}")

    t0 = time.perf_counter()
    model = mst.tl.pretrain(
        adata, sample_key, preset=args.preset, random_state=args.seed, progress=False, **overrides
    )
    train_s = time.perf_counter() - t0
    untrained = mst.tl.pretrain(
        adata,
        sample_key,
        preset=args.preset,
        random_state=args.seed,
        progress=False,
        **{**overrides, "max_epochs": 0},
    )
    sdata = mst.tl.embed_samples(
        adata, sample_key, model=model, neighbors=False, umap=False, progress=False
    )
    sdata.obsm["X_maestro_student"] = model.embed(
        adata, sample_key, which="student", progress=False
    ).to_numpy()
    sdata.obsm["X_untrained"] = untrained.embed(adata, sample_key, progress=False).to_numpy()
    reps = ["X_maestro", "X_maestro_student", "X_untrained"]
    timings = {"X_maestro": train_s}
    if not args.no_baselines:
        methods = ["means", "quantiles", "kmeans32", "kmeans128", "kmeans_clr32"]
        methods += ["kmeans_clr128", "flowsom"]
        if spec.get("cell_type_key"):
            methods.append("gated")
        mst.tl.add_baselines(
            sdata,
            adata,
            sample_key,
            methods=methods,
            cell_type_key=spec.get("cell_type_key"),
            random_state=args.seed,
        )
        reps += [k for k in sdata.obsm if k not in reps and k != "X_umap"]
    table = evaluate_representations(
        sdata,
        adata,
        sample_key,
        spec["targets"],
        reps,
        cell_type_key=spec.get("cell_type_key"),
        groups=spec.get("groups"),
        exclude=spec.get("exclude"),
        batch_key=spec.get("batch_key"),
        n_repeats=args.n_repeats,
        random_state=args.seed,
    )
    print(
        f"# MAESTRO training: {train_s:.0f} s, {model.summary['steps']} steps; "
        f"final rec {model.history['rec'].iloc[-1]:.3f}, z_std "
        f"{model.history['z_std'].iloc[-1]:.3f}"
    )
    print(to_markdown(table))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        for rep, row in table.iterrows():
            fh.write(
                json.dumps(
                    {
                        "data": args.data,
                        "tag": args.tag,
                        "seed": args.seed,
                        "preset": args.preset,
                        "normalize_batches": args.normalize_batches,
                        "overrides": {
                            k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()
                        },
                        "rep": rep,
                        "train_s": round(timings.get(rep, np.nan), 1),
                        "date": time.strftime("%Y-%m-%d"),
                        "machine": machine(),
                        **{
                            k: (None if isinstance(v, float) and np.isnan(v) else v)
                            for k, v in row.items()
                        },
                    },
                    default=str,
                )
                + "\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
