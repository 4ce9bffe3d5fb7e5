"""One tuning run: train the cpu preset with overrides on the synthetic cohort, probe it.

Appends one JSON line to ``benchmarks/results/tuning.jsonl``: the overrides, training time and
steps, the linear-probe accuracy / AUROC on diagnosis, age R², the same-batch nearest-neighbour
rate for the teacher and the student embeddings, and loss diagnostics at the start and end of
training (reconstruction, distillation, z spread, teacher entropy)::

    python benchmarks/tuning.py base10 '{"max_epochs": 10}'
    python benchmarks/tuning.py mass_jit10 '{"max_epochs": 10, "readout": "pma+mass",
                                             "view_shift": 0.5, "view_scale": 0.2}'

``_n`` and ``_difficulty`` in the JSON choose the cohort (default 120 samples, "easy");
``random_state`` (a :func:`maestro_sc.tl.pretrain` argument) the training seed;
``"_normalize_batches": true`` applies :func:`maestro_sc.pp.normalize_batches` first.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import maestro_sc as mst

OUT = Path(__file__).parent / "results" / "tuning.jsonl"


def main(tag: str, overrides: dict, out: Path = OUT) -> dict:
    overrides = dict(overrides)
    difficulty = overrides.pop("_difficulty", "easy")
    n_samples = overrides.pop("_n", 120)
    adata = mst.datasets.synthetic_cohort(
        n_samples=n_samples, difficulty=difficulty, random_state=0
    )
    normalized = bool(overrides.pop("_normalize_batches", False))
    if normalized:
        mst.pp.normalize_batches(adata, "batch")
    start = time.perf_counter()
    model = mst.tl.pretrain(adata, "sample", preset="cpu", progress=False, **overrides)
    result = {
        "tag": tag,
        "normalize_batches": normalized,
        "overrides": overrides,
        "difficulty": difficulty,
        "n_samples": n_samples,
        "train_s": round(time.perf_counter() - start),
        "steps": model.summary["steps"],
    }
    sdata = mst.tl.aggregate_samples(adata, "sample")
    for which in ("teacher", "student"):
        sdata.obsm["Z"] = model.embed(adata, "sample", which=which, progress=False).to_numpy()
        dx = mst.tl.linear_probe(
            sdata, "diagnosis", use_rep="Z", n_repeats=3, inplace=False
        ).set_index("metric")
        age = mst.tl.linear_probe(sdata, "age", use_rep="Z", n_repeats=3, inplace=False).set_index(
            "metric"
        )
        batch = mst.tl.nn_contingency(sdata, "batch", use_rep="Z", inplace=False)
        result[which] = {
            "acc": round(dx.loc["accuracy", "mean"], 3),
            "auroc": round(dx.loc["auroc", "mean"], 3),
            "age_r2": round(age.loc["r2", "mean"], 3),
            "same_batch": round(batch["agreement"], 3),
        }
    h = model.history
    if len(h):
        result["history"] = {
            "rec_start": round(h.rec.iloc[:5].mean(), 3),
            "rec_end": round(h.rec.iloc[-5:].mean(), 3),
            "sd_end": round(h.sd.iloc[-5:].mean(), 3),
            "z_std_end": round(h.z_std.iloc[-5:].mean(), 3),
            "teacher_entropy_end": round(h.teacher_entropy.iloc[-5:].mean(), 3),
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})))
