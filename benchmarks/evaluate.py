"""Helpers for the benchmark scripts: score many representations, print a markdown table.

Used from a script in this folder (``from evaluate import evaluate_representations``)::

    sdata = mst.tl.aggregate_samples(adata, "sample")
    mst.tl.add_baselines(sdata, adata, "sample", cell_type_key="cell_type")
    table = evaluate_representations(
        sdata, adata, "sample", {"diagnosis": "classification", "age": "regression"},
        reps=["X_maestro", "X_means", "X_kmeans32"], cell_type_key="cell_type",
        batch_key="batch",
    )
    print(to_markdown(table))

Rows are representations plus a last ``chance`` row; columns are, per target, accuracy /
AUROC / F1 (classes) or MAE / R² (continuous) with a `` std`` column beside each, the
nearest-neighbour agreement for class targets, the same-batch neighbour rate, and the
cell-type retrieval MAE (absolute and relative to the training-mean predictor).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

import maestro_sc as mst

#: Short column names for the probe metrics.
METRIC_NAMES = {"accuracy": "acc", "auroc": "AUROC", "f1": "F1", "mae": "MAE", "r2": "R2"}

#: Representations left out of cell-type retrieval: the gated proportions are its target.
NO_RETRIEVAL = ("X_gated",)


def evaluate_representations(
    sdata: Any,
    cells: Any,
    sample_key: str,
    targets: Mapping[str, str],
    reps: Sequence[str],
    *,
    cell_type_key: str | None = None,
    groups: str | None = None,
    exclude: Any = None,
    batch_key: str | None = None,
    n_splits: int = 5,
    n_repeats: int = 10,
    random_state: int = 0,
    mod: str | None = None,
) -> pd.DataFrame:
    """Score each representation of ``sdata.obsm`` with the paper's protocol.

    Parameters
    ----------
    sdata
        Sample-level AnnData holding every representation in ``obsm``.
    cells
        AnnData of cells (for cell-type retrieval); may be ``None`` without ``cell_type_key``.
    sample_key
        Sample column of the cells.
    targets
        ``{obs column: "classification" | "regression" | "auto"}``.
    reps
        ``obsm`` keys to score, one row each.
    cell_type_key
        Cell-type column of the cells; adds the retrieval columns.
    groups
        ``obs`` column kept together in the probe folds (e.g. a patient id).
    exclude
        Samples left out of the probes and neighbour tables (mask, query or names).
    batch_key
        ``obs`` column of batches; adds the same-batch nearest-neighbour rate.
    n_splits, n_repeats, random_state
        Cross-validation of the probes.
    mod
        Modality of a MuData ``cells``.

    Returns
    -------
    DataFrame indexed by representation (and a last ``chance`` row).
    """
    rows: dict[str, dict[str, float]] = {}
    chance: dict[str, float] = {}
    for rep in reps:
        row: dict[str, float] = {}
        for target, task in targets.items():
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*capped.*")
                res = mst.tl.linear_probe(
                    sdata,
                    target,
                    use_rep=rep,
                    task=task,
                    groups=groups,
                    exclude=exclude,
                    n_splits=n_splits,
                    n_repeats=n_repeats,
                    random_state=random_state,
                    inplace=False,
                ).set_index("metric")
            metrics = (
                ["accuracy", "auroc", "f1"]
                if res.attrs["task"] == "classification"
                else [
                    "mae",
                    "r2",
                ]
            )
            for metric in metrics:
                name = f"{target} {METRIC_NAMES[metric]}"
                row[name] = float(res.loc[metric, "mean"])
                row[f"{name} std"] = float(res.loc[metric, "std"])
                chance[name] = float(res.loc[metric, "chance"])
            if res.attrs["task"] == "classification":
                nn = mst.tl.nn_contingency(
                    sdata, target, use_rep=rep, exclude=exclude, inplace=False
                )
                row[f"{target} NN"] = nn["agreement"]
                chance[f"{target} NN"] = nn["chance"]
        if batch_key is not None:
            nn = mst.tl.nn_contingency(
                sdata, batch_key, use_rep=rep, exclude=exclude, inplace=False
            )
            row["same-batch NN"] = nn["agreement"]
            chance["same-batch NN"] = nn["chance"]
        if cell_type_key is not None:
            if rep in NO_RETRIEVAL:
                row["retrieval MAE"] = math.nan
                row["retrieval rel."] = math.nan
            else:
                ret = mst.tl.celltype_retrieval(
                    sdata,
                    cells,
                    sample_key,
                    cell_type_key,
                    use_rep=rep,
                    n_splits=n_splits,
                    random_state=random_state,
                    mod=mod,
                    inplace=False,
                ).loc["(mean)"]
                row["retrieval MAE"] = float(ret["mae"])
                row["retrieval rel."] = float(ret["relative_mae"])
                chance["retrieval MAE"] = float(ret["mae_mean_predictor"])
                chance["retrieval rel."] = 1.0
        rows[rep] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.loc["chance"] = pd.Series(chance)
    table.index.name = "representation"
    return table


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(table: pd.DataFrame, digits: int = 3, index_name: str | None = None) -> str:
    """A GitHub markdown table; a column ``c`` with a ``c std`` beside it prints ``m ± s``.

    Written by hand so the benchmarks need no ``tabulate``.
    """
    columns = [c for c in table.columns if not str(c).endswith(" std")]
    header = [index_name or table.index.name or "", *map(str, columns)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|",
    ]
    for label, row in table.iterrows():
        cells = [str(label)]
        for c in columns:
            text = _cell(row[c], digits)
            std = row.get(f"{c} std")
            if std is not None and text != "—" and not pd.isna(std):
                text = f"{text} ± {_cell(std, digits)}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
