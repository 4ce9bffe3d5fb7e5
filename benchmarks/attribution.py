"""Cell attribution check: do the cells of the condition-defining population score higher?

Trains the ``cpu`` preset on the synthetic cohort, scores every cell with
``mst.tl.cell_attribution`` (both methods: ``composition`` and ``attention``; trained and
untrained encoder), and reports the AUROC of the score for the expanded rare population
(plasmablasts) against the other cells of the ``plasmablast_expansion`` samples, and the same
for CD14 monocytes in the ``monocytosis`` samples. Writes the figure of one sample (default
method)::

    python benchmarks/attribution.py --out docs/_static/attribution.png
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import matplotlib

matplotlib.use("Agg")
from sklearn.metrics import roc_auc_score

import maestro_sc as mst


def auroc(adata, diagnosis: str, cell_type_prefix: str) -> float:
    cells = adata.obs[adata.obs["diagnosis"] == diagnosis]
    positive = cells["cell_type"].astype(str).str.startswith(cell_type_prefix)
    return float(roc_auc_score(positive, cells["maestro_attribution"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-samples", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="PNG of one sample's scores")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    adata = mst.datasets.synthetic_cohort(n_samples=args.n_samples, random_state=args.seed)
    start = time.perf_counter()
    model = mst.tl.pretrain(adata, "sample", preset="cpu", random_state=args.seed, progress=False)
    print(f"# trained {model.summary['steps']} steps in {time.perf_counter() - start:.0f} s")
    untrained = mst.tl.pretrain(adata, "sample", preset="cpu", max_epochs=0, progress=False)
    print("| method | encoder | plasmablasts | CD14 monocytes |")
    print("|---|---|---:|---:|")
    methods = ("composition", "attention") if model.config.n_prototypes else ("attention",)
    for method in methods:
        for name, m in (("trained teacher", model), ("untrained", untrained)):
            mst.tl.cell_attribution(adata, m, "sample", method=method, progress=False)
            pb = auroc(adata, "plasmablast_expansion", "Plasmablast")
            mono = auroc(adata, "monocytosis", "CD14")
            print(f"| {method} | {name} | {pb:.3f} | {mono:.3f} |", flush=True)
    if args.out:
        mst.tl.cell_attribution(adata, model, "sample", progress=False)
        sample = adata.obs.loc[adata.obs["diagnosis"] == "plasmablast_expansion", "sample"].iloc[0]
        mst.pl.cell_attribution(
            adata, sample_key="sample", samples=[sample], show=False, save=args.out
        )
        print(f"# figure: {args.out} (sample {sample})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
