"""Plots of the evaluation results: nearest-neighbour table, linear probe, cell-type retrieval.

Each plot reads what the matching ``mst.tl`` tool stored in the sample AnnData's ``uns``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._results import NEIGHBORS, PROBE, RETRIEVAL, load_result, result_kind, stored_results
from ..tl._neighbors import nn_contingency as compute_nn_contingency
from ..tl._retrieval import RETRIEVAL_MEAN
from ._utils import finish, method_colors, new_axes, results_by_method

_METRIC_LABELS = {
    "accuracy": "Accuracy",
    "auroc": "AUROC",
    "f1": "F1 (macro)",
    "mae": "MAE",
    "r2": "R²",
}


def _is_legacy(results: Any) -> bool:
    """Whether the first argument is result tables (the deprecated call) instead of sdata."""
    return isinstance(results, pd.DataFrame) or (
        isinstance(results, Mapping) and all(isinstance(v, pd.DataFrame) for v in results.values())
    )


#: Per kind of result drawn as bars: (what it is called, the plot, the tool, the column that
#: ``key`` may name).
_BARS = {
    PROBE: ("probe", "probe", "linear_probe", "target"),
    RETRIEVAL: ("cell-type retrieval", "celltype_retrieval", "celltype_retrieval", "cell_type_key"),
}


def _result_tables(
    sdata: Any, key: str | Sequence[str] | Mapping[str, str] | None, kind: str
) -> dict[str, pd.DataFrame]:
    """``{label: table}`` to draw: the stored results ``key`` names, or tables passed directly."""
    what, plot, tool, column = _BARS[kind]
    if not _is_legacy(sdata):
        return _stored_tables(sdata, key, kind, column)
    if key is not None:
        raise TypeError("With result tables as the first argument, pass no `key`.")
    warnings.warn(
        f"Passing result tables to mst.pl.{plot} is deprecated: run mst.tl.{tool}(sdata, ...) "
        "(it stores its result in sdata.uns) and pass sdata and the key(s).",
        DeprecationWarning,
        stacklevel=4,
    )
    return results_by_method(sdata, what)


def _stored_tables(
    sdata: Any, key: str | Sequence[str] | Mapping[str, str] | None, kind: str, column: str
) -> dict[str, pd.DataFrame]:
    """``{label: table}`` of the stored results that ``key`` names (see :func:`probe`)."""
    if key is None:
        raise TypeError(
            f"Pass `key`: a key of sdata.uns, a list of them, or a {column} value; stored "
            f"results: {stored_results(sdata, kind)}."
        )
    if isinstance(key, Mapping):
        return {str(label): load_result(sdata, k, kind) for label, k in key.items()}
    if isinstance(key, str):
        if key in sdata.uns:
            keys = [key]
        else:
            keys = [
                k
                for k in stored_results(sdata, kind)
                if str(sdata.uns[k].get("params", {}).get(column)) == key
            ]
            if not keys:
                load_result(sdata, key, kind)  # raises, listing the stored results
    else:
        keys = [str(k) for k in key]
        if not keys:
            raise ValueError("`key` is an empty list; name at least one stored result.")
    tables = {k: load_result(sdata, k, kind) for k in keys}
    reps = [str(t.attrs.get("use_rep", k)) for k, t in tables.items()]
    labels = reps if len(set(reps)) == len(reps) else list(tables)
    return dict(zip(labels, tables.values(), strict=True))


def _stored_neighbors(
    sdata: Any, key: str, use_rep: str, metric: str | None, exclude: Any
) -> dict[str, Any]:
    """The stored :func:`maestro_sc.tl.nn_contingency` result that ``key`` names."""
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a key of sdata.uns or an obs column, got {key!r}.")
    for name in (key, f"nn_{key}_{use_rep}"):
        if result_kind(sdata.uns.get(name)) == NEIGHBORS:
            if metric is not None or exclude is not None:
                warnings.warn(
                    f"`metric` and `exclude` are deprecated and ignored: sdata.uns[{name!r}] "
                    "holds the result; pass them to mst.tl.nn_contingency.",
                    DeprecationWarning,
                    stacklevel=3,
                )
            return load_result(sdata, name, NEIGHBORS)
    if key in sdata.uns:
        load_result(sdata, key, NEIGHBORS)  # raises: the key holds something else
    warnings.warn(
        f"sdata.uns holds no nearest-neighbour result for {key!r} and {use_rep!r} "
        f"(nn_{key}_{use_rep}); computing it in the plot is deprecated. Run "
        f"mst.tl.nn_contingency(sdata, {key!r}, use_rep={use_rep!r}) first.",
        DeprecationWarning,
        stacklevel=3,
    )
    return compute_nn_contingency(
        sdata,
        key,
        use_rep=use_rep,
        metric=metric or "euclidean",
        exclude=exclude,
        inplace=False,
    )


def nn_contingency(
    sdata: Any,
    key: str,
    *,
    use_rep: str = "X_maestro",
    metric: str | None = None,
    exclude: Any = None,
    cmap: str = "Blues",
    title: str | None = None,
    ax: Any = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Any:
    """Heatmap of each sample's label against its nearest neighbour's label (paper Fig. 3b).

    Draws the result that :func:`maestro_sc.tl.nn_contingency` stored in ``sdata.uns``. Cells
    are coloured by the fraction of the row (true label) and annotated with the counts; the
    title gives the agreement rate and its chance level.

    Parameters
    ----------
    sdata
        Sample-level AnnData holding the result.
    key
        Key of ``sdata.uns`` with the result (the tool's ``key_added``), or the label column
        it was computed for: then ``sdata.uns[f"nn_{key}_{use_rep}"]`` is drawn.
    use_rep
        Representation of the result to draw when ``key`` names a label column.
    metric, exclude
        Deprecated: when no stored result is found, the table is computed here with these (as
        in :func:`maestro_sc.tl.nn_contingency`) after a ``DeprecationWarning``; run the tool
        first instead.
    cmap
        Colour map of the row fractions.
    title
        Title (default: representation, agreement and chance).
    ax
        Axes to draw in (default: a new figure).
    show
        Show the figure (default: only in a Jupyter notebook); when shown, returns ``None``.
    save
        Path of an image file to write.

    Returns
    -------
    The Axes (unless shown).

    Examples
    --------
    >>> import maestro_sc as mst
    >>> mst.tl.nn_contingency(sdata, "diagnosis")  # doctest: +SKIP
    >>> mst.pl.nn_contingency(sdata, "diagnosis")  # doctest: +SKIP
    """
    res = _stored_neighbors(sdata, key, use_rep, metric, exclude)
    use_rep = str(res["use_rep"])
    counts = res["table"]
    props = res["proportions"].fillna(0.0).to_numpy()
    k = len(counts)
    ax = new_axes(ax, (max(4.8, 2.6 + 0.6 * k), max(4.2, 2.4 + 0.55 * k)))
    image = ax.imshow(props, cmap=cmap, vmin=0, vmax=1)
    # A style with axes.grid on (scanpy's set_figure_params) would draw lines across the cells.
    ax.grid(False)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(int(counts.iat[i, j])),
                ha="center",
                va="center",
                fontsize=9,
                color="white" if props[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(k), counts.columns, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), counts.index)
    ax.set_xlabel(f"nearest neighbour's {key}")
    ax.set_ylabel(key)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of row")
    ax.set_title(
        title
        if title is not None
        else f"{use_rep}: agreement {res['agreement']:.2f} (chance {res['chance']:.2f})",
        fontsize=10,
    )
    return finish(ax, show, save)


def _grouped_bars(
    ax: Any,
    groups: Sequence[str],
    methods: Sequence[str],
    means: np.ndarray,
    errors: np.ndarray | None,
    colors: Mapping[str, Any],
) -> np.ndarray:
    """Bars of ``means[method, group]`` side by side per group; returns the group centres."""
    n_m = len(methods)
    width = 0.8 / n_m
    x = np.arange(len(groups), dtype=float)
    for i, method in enumerate(methods):
        offset = (i - (n_m - 1) / 2) * width
        ax.bar(
            x + offset,
            means[i],
            width,
            yerr=None if errors is None else errors[i],
            capsize=2 if errors is not None else 0,
            color=colors[method],
            label=method,
            error_kw={"elinewidth": 0.8},
        )
    ax.set_xticks(x, groups)
    return x


def probe(
    sdata: Any,
    key: str | Sequence[str] | Mapping[str, str] | None = None,
    metrics: Sequence[str] = ("accuracy", "auroc", "f1"),
    *,
    chance: bool = True,
    palette: Mapping[str, Any] | None = None,
    title: str | None = None,
    ax: Any = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Any:
    """Grouped bars of linear-probe metrics for several representations (paper Fig. 4).

    Draws the results that :func:`maestro_sc.tl.linear_probe` stored in ``sdata.uns``.

    Parameters
    ----------
    sdata
        Sample-level AnnData holding the results. Deprecated: ``{method: table}`` of
        :func:`maestro_sc.tl.linear_probe` tables, or one table with a ``method`` column (then
        the second argument, if given, is ``metrics``).
    key
        Which results: a key of ``sdata.uns`` (the tool's ``key_added``), a list of keys, a
        dict ``{label: key}``, or a target column: every stored probe of that target. Bars are
        labelled by representation (``use_rep``) unless a dict names them.
    metrics
        Metrics to show, one bar group each on one y axis; for a continuous target draw
        ``("r2",)`` and ``("mae",)`` on separate Axes, as their scales differ.
    chance
        Draw each metric's chance level as a dashed line across its group.
    palette
        Colours per label (default: tab10 in the order of the results).
    title
        Axes title.
    ax
        Axes to draw in (default: a new figure).
    show
        Show the figure (default: only in a Jupyter notebook); when shown, returns ``None``.
    save
        Path of an image file to write.

    Returns
    -------
    The Axes (unless shown).

    Examples
    --------
    >>> import maestro_sc as mst
    >>> for rep in ["X_maestro", "X_kmeans32"]:
    ...     mst.tl.linear_probe(sdata, "diagnosis", use_rep=rep)  # doctest: +SKIP
    >>> mst.pl.probe(sdata, "diagnosis")  # doctest: +SKIP
    """
    if _is_legacy(sdata) and key is not None:
        metrics, key = key, None  # the second argument of the deprecated call
    tables = _result_tables(sdata, key, PROBE)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    methods = list(tables)
    means = np.full((len(methods), len(metrics)), np.nan)
    stds = np.zeros_like(means)
    chances = np.full(len(metrics), np.nan)
    for i, method in enumerate(methods):
        table = tables[method]
        if "metric" not in table.columns:
            raise ValueError(
                f"Results of {method!r} have no 'metric' column; pass mst.tl.linear_probe tables."
            )
        table = table.set_index("metric")
        missing = [m for m in metrics if m not in table.index]
        if missing:
            raise KeyError(
                f"Metrics {missing} are not in the results of {method!r}, which has "
                f"{list(table.index)}. Pass `metrics=` among these."
            )
        means[i] = table.loc[metrics, "mean"].to_numpy(dtype=float)
        stds[i] = table.loc[metrics, "std"].to_numpy(dtype=float)
        if "chance" in table.columns and np.isnan(chances).all():
            chances = table.loc[metrics, "chance"].to_numpy(dtype=float)
    colors = method_colors(methods, palette)
    ax = new_axes(ax, (1.2 + 0.45 * len(metrics) * max(2, len(methods)) ** 0.8 + 2.2, 3.4))
    x = _grouped_bars(ax, [_METRIC_LABELS.get(m, m) for m in metrics], methods, means, stds, colors)
    if chance and np.isfinite(chances).any():
        for j, value in enumerate(chances):
            if np.isfinite(value):
                ax.hlines(
                    value,
                    x[j] - 0.45,
                    x[j] + 0.45,
                    colors="black",
                    linestyles="dashed",
                    linewidth=1,
                    label="chance" if j == 0 else None,
                )
    if set(metrics) <= {"accuracy", "auroc", "f1"} or all(m.startswith("f1_") for m in metrics):
        ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (mean ± std over folds)")
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    return finish(ax, show, save)


def celltype_retrieval(
    sdata: Any,
    key: str | Sequence[str] | Mapping[str, str] | None = None,
    *,
    mean_predictor: bool = True,
    palette: Mapping[str, Any] | None = None,
    title: str | None = None,
    ax: Any = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Any:
    """Per-cell-type error of proportion retrieval for several representations (paper Fig. 5).

    Draws the results that :func:`maestro_sc.tl.celltype_retrieval` stored in ``sdata.uns``:
    one group of bars per cell type, and first the mean over cell types (paper Fig. 5a); the
    black ticks mark the error of predicting the training-fold mean proportions.

    Parameters
    ----------
    sdata
        Sample-level AnnData holding the results. Deprecated: ``{method: table}`` of
        :func:`maestro_sc.tl.celltype_retrieval` tables, or one table with a ``method`` column.
    key
        Which results: a key of ``sdata.uns`` (the tool's ``key_added``), a list of keys, a
        dict ``{label: key}``, or a cell-type column: every stored retrieval of that column.
        Bars are labelled by representation (``use_rep``) unless a dict names them.
    mean_predictor
        Mark the training-mean predictor's error in each group.
    palette
        Colours per label (default: tab10 in the order of the results).
    title
        Axes title.
    ax
        Axes to draw in (default: a new figure).
    show
        Show the figure (default: only in a Jupyter notebook); when shown, returns ``None``.
    save
        Path of an image file to write.

    Returns
    -------
    The Axes (unless shown).

    Examples
    --------
    >>> import maestro_sc as mst
    >>> for rep in ["X_maestro", "X_kmeans32"]:
    ...     mst.tl.celltype_retrieval(
    ...         sdata, adata, "sample", "cell_type", use_rep=rep
    ...     )  # doctest: +SKIP
    >>> mst.pl.celltype_retrieval(sdata, "cell_type")  # doctest: +SKIP
    """
    tables = _result_tables(sdata, key, RETRIEVAL)
    methods = list(tables)
    first = tables[methods[0]]
    if "cell_type" in first.columns:
        tables = {m: t.set_index("cell_type") for m, t in tables.items()}
        first = tables[methods[0]]
    if "mae" not in first.columns:
        raise ValueError("Results have no 'mae' column; pass mst.tl.celltype_retrieval tables.")
    index = [str(t) for t in first.index]
    types = [t for t in index if t != RETRIEVAL_MEAN]
    groups = [RETRIEVAL_MEAN, *types] if RETRIEVAL_MEAN in index else types
    means = np.full((len(methods), len(groups)), np.nan)
    for i, method in enumerate(methods):
        mae = tables[method]["mae"]
        means[i] = mae.set_axis(mae.index.astype(str)).reindex(groups).to_numpy(dtype=float)
    colors = method_colors(methods, palette)
    width = 1.5 + 0.3 * len(groups) * max(2, len(methods)) ** 0.8 + 2.2
    ax = new_axes(ax, (min(width, 12.0), 4.2))
    labels = ["mean" if g == RETRIEVAL_MEAN else g for g in groups]
    x = _grouped_bars(ax, labels, methods, means, None, colors)
    ax.tick_params(axis="x", labelrotation=45)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")
    if mean_predictor and "mae_mean_predictor" in first.columns:
        ref = first["mae_mean_predictor"]
        ref = ref.set_axis(ref.index.astype(str)).reindex(groups).to_numpy(dtype=float)
        ax.hlines(
            ref, x - 0.45, x + 0.45, colors="black", linewidth=1.5, label="training-mean predictor"
        )
    if RETRIEVAL_MEAN in groups:
        ax.axvline(0.5, color="0.7", linewidth=0.8)
    ax.set_ylabel("MAE of the cell-type proportion")
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    return finish(ax, show, save)
