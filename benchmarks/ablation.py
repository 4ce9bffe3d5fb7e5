"""Ablation study in the layout of the paper's Table 1, on the synthetic cohort.

Each row builds on the one above (paper appendix F.4); the last removes masking and keeps only
the self-distillation of a random subset towards the teacher's full set. Every row is trained
with the ``cpu`` preset for ``--epochs`` epochs with ``--seeds`` training seeds on the same
120-sample "easy" cohort, and probed on diagnosis (4 classes, chance 0.25). ``--readout``
chooses the embedding: ``proto`` (the preset's, with prototype pooling) or ``pma`` (the paper's
``z``, ``n_prototypes=0``)::

    python benchmarks/ablation.py run --readout proto --epochs 10 --seeds 0 1 2
    python benchmarks/ablation.py run --readout pma --epochs 10 --seeds 0 1 2
    python benchmarks/ablation.py table                           # writes ablation.md

Runs already in ``results/ablation.jsonl`` (same row, seed and epochs) are skipped, so an
interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from _machine import machine

RESULTS = Path(__file__).parent / "results"
JSONL = RESULTS / "ablation.jsonl"
TABLE = RESULTS / "ablation.md"

ROWS: dict[str, dict] = {
    "Random masking (rate 0.5)": {"mask_mode": "random", "mask_rates": [0.5], "w_sd": 0.0},
    "+ Multi-rate masking": {"mask_mode": "random", "w_sd": 0.0},
    "+ Block masking (NRBM)": {"mask_mode": "block", "w_sd": 0.0},
    "+ Self-distillation (full model)": {},
    "- Masking (self-distillation only)": {"mask_mode": "none", "w_rec": 0.0},
}


#: Embedding variants: overrides of the ``cpu`` preset.
READOUTS: dict[str, dict] = {"proto": {}, "pma": {"n_prototypes": 0}}


def _rows() -> list[dict]:
    if not JSONL.exists():
        return []
    rows = [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]
    for r in rows:
        r.setdefault("readout", "pma")
    return rows


def run(epochs: int, seeds: list[int], readout: str) -> None:
    from tuning import main as tuning_run

    import maestro_sc  # noqa: F401  (fail early when the package is missing)

    done = {(r["tag"], r["seed"], r["epochs"], r["readout"]) for r in _rows()}
    for seed in seeds:
        for tag, overrides in ROWS.items():
            if (tag, seed, epochs, readout) in done:
                continue
            tmp = RESULTS / f"_ablation_run_{readout}.jsonl"
            tmp.unlink(missing_ok=True)
            over = {**READOUTS[readout], **overrides, "max_epochs": epochs, "random_state": seed}
            result = tuning_run(tag, over, out=tmp)
            tmp.unlink(missing_ok=True)
            result.update(seed=seed, epochs=epochs, readout=readout, machine=machine())
            with JSONL.open("a") as fh:
                fh.write(json.dumps(result) + "\n")
            print(json.dumps(result), flush=True)


def _cell(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def table() -> str:
    rows = _rows()
    lines = [
        "| readout | model | teacher acc | teacher AUROC | student acc | student AUROC | "
        "same-batch NN | seeds | steps | train s (median) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for readout, tag in ((ro, tag) for ro in READOUTS for tag in ROWS):
        runs = [r for r in rows if r["tag"] == tag and r["readout"] == readout]
        if not runs:
            continue
        t, s = [r["teacher"] for r in runs], [r["student"] for r in runs]
        lines.append(
            f"| {readout} | {tag} | {_cell([x['acc'] for x in t])} | {_cell([x['auroc'] for x in t])} | "
            f"{_cell([x['acc'] for x in s])} | {_cell([x['auroc'] for x in s])} | "
            f"{_cell([x['same_batch'] for x in t])} | {len(runs)} | {runs[0]['steps']} | "
            f"{int(np.median([r['train_s'] for r in runs]))} |"
        )
    text = "\n".join(lines) + "\n"
    TABLE.write_text(text)
    return text


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--epochs", type=int, default=10)
    p_run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p_run.add_argument("--readout", choices=list(READOUTS), default="proto")
    sub.add_parser("table")
    args = parser.parse_args()
    if args.cmd == "run":
        run(args.epochs, args.seeds, args.readout)
    print(table())
