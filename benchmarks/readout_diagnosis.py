"""Where is the diagnosis signal inside the paper's encoder? Probes of its internal readouts.

Trains the ``cpu`` preset *without* prototype pooling (the paper's readout, ``n_prototypes=0``)
on the 120-sample synthetic cohort, then, for the trained teacher and for the untrained encoder,
probes (diagnosis, logistic regression, 5-fold CV × 3) several sample summaries of the same
cells:

- ``z``: the embedding (PMA over the last ISAB);
- ``mean layer L``: the mean over the sample's cells of the cell states after layer ``L``
  (0 = the input ``Linear``, 1-3 = after each ISAB);
- ``codebook layer L``: log proportions ``log(p + 0.01)`` of the sample's cells over k-means
  (K = 128) centroids fitted on pooled cell states of layer ``L``;
- ``codebook markers``: the same on the standardised markers.

If the codebooks read the diagnosis and ``z`` does not, the information is in the cells but the
pooling loses it. Writes ``results/readout_diagnosis.md``::

    python benchmarks/readout_diagnosis.py
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

import maestro_sc as mst

OUT = Path(__file__).parent / "results" / "readout_diagnosis.md"


def _states(net, cells: np.ndarray) -> list[np.ndarray]:
    import torch

    enc = net.teacher_encoder
    with torch.no_grad():
        x = net._cells(torch.from_numpy(cells))
        h = enc.cells(x)
        out = [h[0].numpy()]
        for isab in enc.isabs:
            h = isab(h)
            out.append(h[0].numpy())
        out.append(x[0].numpy())  # standardised markers
    return out


def _codebook(states: list[np.ndarray], k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    pool = np.concatenate([s[rng.choice(len(s), min(200, len(s)), replace=False)] for s in states])
    centers = KMeans(k, n_init=1, random_state=seed).fit(pool).cluster_centers_
    feats = []
    for s in states:
        d2 = (s**2).sum(1)[:, None] - 2 * s @ centers.T + (centers**2).sum(1)[None]
        feats.append(np.log(np.bincount(d2.argmin(1), minlength=k) / len(s) + 1e-2))
    return np.stack(feats)


def main() -> None:
    warnings.filterwarnings("ignore")
    adata = mst.datasets.synthetic_cohort(n_samples=120, random_state=0)
    sdata = mst.tl.aggregate_samples(adata, "sample")
    labels = adata.obs["sample"].astype(str).to_numpy()
    cells = [np.asarray(adata.X[labels == s]) for s in sdata.obs_names]
    start = time.perf_counter()
    trained = mst.tl.pretrain(adata, "sample", preset="cpu", n_prototypes=0, progress=False)
    seconds = time.perf_counter() - start
    untrained = mst.tl.pretrain(
        adata, "sample", preset="cpu", n_prototypes=0, max_epochs=0, progress=False
    )
    names = ["layer 0 (input Linear)", "layer 1", "layer 2", "layer 3", "markers"]
    lines = [
        f"# cpu preset, n_prototypes=0: {trained.summary['steps']} steps in {seconds:.0f} s",
        "",
        "| summary | trained acc | trained AUROC | untrained acc | untrained AUROC |",
        "|---|---:|---:|---:|---:|",
    ]
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for tag, model in (("trained", trained), ("untrained", untrained)):
        reps = {"z (PMA)": model.embed(adata, "sample", progress=False).to_numpy()}
        states = [_states(model.net, c) for c in cells]
        for layer in range(4):
            reps[f"mean {names[layer]}"] = np.stack([s[layer].mean(0) for s in states])
        for layer in range(5):
            reps[f"codebook {names[layer]}"] = _codebook([s[layer] for s in states], 128, 0)
        for name, rep in reps.items():
            sdata.obsm["R"] = rep.astype(np.float64)
            probe = mst.tl.linear_probe(sdata, "diagnosis", use_rep="R", n_repeats=3, inplace=False)
            probe = probe.set_index("metric")
            acc, auroc = probe.loc["accuracy", "mean"], probe.loc["auroc", "mean"]
            results.setdefault(name, {})[tag] = (acc, auroc)
            print(f"{tag:9s} {name:32s} acc {acc:.3f} AUROC {auroc:.3f}", flush=True)
    for name, r in results.items():
        t, u = r["trained"], r["untrained"]
        lines.append(f"| {name} | {t[0]:.3f} | {t[1]:.3f} | {u[0]:.3f} | {u[1]:.3f} |")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
