"""Evaluation results in a sample AnnData's ``uns``: how ``tl`` stores them and how they are read.

The one hand-over between the evaluation tools and their readers: ``mst.tl.linear_probe``,
``celltype_retrieval`` and ``nn_contingency`` store their result with :func:`store_result`;
``mst.get.result_df`` and the ``mst.pl`` plots read it back with :func:`load_result`, which
returns what the tool returns with ``inplace=False``. Each stored result is a dict with a
``kind``, a ``params`` dict and the kind's tables, made writable to ``.h5ad`` by
:func:`h5ad_safe`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ._utils import warn_overwrite

PROBE = "linear_probe"
RETRIEVAL = "celltype_retrieval"
NEIGHBORS = "nn_contingency"

#: The tool that writes each kind, for messages.
_TOOLS = {
    PROBE: "mst.tl.linear_probe",
    RETRIEVAL: "mst.tl.celltype_retrieval",
    NEIGHBORS: "mst.tl.nn_contingency",
}


def h5ad_safe(value: Any) -> Any:
    """A copy of ``value`` that ``AnnData.write_h5ad`` can store.

    Mapping keys become strings and ``None`` values are left out of mappings (elsewhere ``None``
    becomes ``""``); a DataFrame becomes a dict of its columns; a list or tuple of numbers
    becomes an array, of anything else an array of strings; arrays of text become object arrays
    of ``str``; numpy scalars become Python scalars.

    Examples
    --------
    >>> h5ad_safe({"rates": (0.25, 0.5), "names": ["a", 1], "seed": None})
    {'rates': array([0.25, 0.5 ]), 'names': array(['a', '1'], dtype=object)}
    """
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return {str(k): h5ad_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, pd.DataFrame):
        return {str(c): h5ad_safe(value[c].to_numpy()) for c in value.columns}
    if isinstance(value, (np.ndarray, pd.Index)):
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind == "U":
            return np.asarray([str(v) for v in arr.ravel()], dtype=object).reshape(arr.shape)
        return arr
    if isinstance(value, (list, tuple)):
        items = [h5ad_safe(v) for v in value]
        if all(isinstance(v, (int, float, np.number)) for v in items):
            return np.asarray(items)
        return np.asarray([str(v) for v in items], dtype=object)
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def store_result(sdata: Any, key: str, kind: str, result: Any) -> None:
    """Store ``result`` (as the tool of ``kind`` returns it) in ``sdata.uns[key]``."""
    if kind == PROBE:
        attrs = dict(result.attrs)
        folds = pd.DataFrame(attrs.pop("folds"))
        classes = attrs.pop("classes")
        payload = {"table": result, "folds": folds, "classes": classes, "params": attrs}
    elif kind == RETRIEVAL:
        payload = {"table": result.reset_index(), "params": dict(result.attrs)}
    if kind in (PROBE, RETRIEVAL):
        # .h5ad keeps a dict's keys in sorted order; the column order is stored beside them.
        payload["columns"] = list(payload["table"].columns)
    elif kind == NEIGHBORS:
        table = result["table"]
        payload = {
            "labels": [str(c) for c in table.index],
            "counts": table.to_numpy(),
            "agreement": result["agreement"],
            "chance": result["chance"],
            "neighbors": result["neighbors"].to_numpy(),
            "samples": result["neighbors"].index.to_numpy(),
            "params": result["params"],
        }
    else:
        raise ValueError(f"Unknown result kind {kind!r}; expected one of {list(_TOOLS)}.")
    warn_overwrite(sdata.uns, key, "sdata.uns")
    sdata.uns[key] = h5ad_safe({"kind": kind, **payload})


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def result_kind(value: Any) -> str | None:
    """The kind of a stored result (also for results stored without one), else ``None``."""
    if not isinstance(value, Mapping):
        return None
    kind = value.get("kind")
    if isinstance(kind, str) and kind in _TOOLS:
        return kind
    if "folds" in value and "table" in value:
        return PROBE
    if "counts" in value and "labels" in value:
        return NEIGHBORS
    if isinstance(value.get("table"), Mapping) and "cell_type" in value["table"]:
        return RETRIEVAL
    return None


def stored_results(sdata: Any, kind: str | None = None) -> list[str]:
    """Keys of ``sdata.uns`` holding evaluation results (of ``kind``), in ``uns`` order."""
    return [
        str(k)
        for k, v in sdata.uns.items()
        if result_kind(v) is not None and (kind is None or result_kind(v) == kind)
    ]


def load_result(sdata: Any, key: str, kind: str | None = None) -> Any:
    """The result stored under ``sdata.uns[key]``, as its tool returns it with ``inplace=False``.

    A DataFrame for the linear probe and the cell-type retrieval, a dict for the
    nearest-neighbour table. With ``kind``, a result of another kind is an error.
    """
    from anndata import AnnData

    if not isinstance(sdata, AnnData):
        raise TypeError(
            f"Expected the sample-level AnnData holding the results, got {type(sdata).__name__}."
        )
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a key of sdata.uns (str), got {type(key).__name__}.")
    wanted = f"a {_TOOLS[kind]} result" if kind else "an evaluation result"
    if key not in sdata.uns:
        keys = stored_results(sdata, kind)
        raise KeyError(
            f"{key!r} is not in sdata.uns, which holds {wanted} under {keys}. Run "
            f"{_TOOLS.get(kind, 'the tool')} first (it stores its result in sdata.uns)."
        )
    stored = sdata.uns[key]
    found = result_kind(stored)
    if found is None or (kind is not None and found != kind):
        what = f"a {_TOOLS[found]} result" if found else "no evaluation result"
        raise ValueError(f"sdata.uns[{key!r}] holds {what}, not {wanted}.")
    return _READERS[found](stored)


#: Column orders of the results stored before the order was stored with them.
_PROBE_COLUMNS = ("metric", "mean", "std", "n_folds", "chance")
_FOLD_COLUMNS = ("repeat", "fold", "metric", "value")
_RETRIEVAL_COLUMNS = ("cell_type", "mae", "mae_mean_predictor", "relative_mae", "mean_proportion")


def _frame(columns: Mapping[str, Any], order: Any = None) -> pd.DataFrame:
    frame = pd.DataFrame({str(c): np.asarray(v) for c, v in columns.items()})
    if order is not None:
        frame = frame[[str(c) for c in np.atleast_1d(order)]]
    return frame


def _params(stored: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _scalar(v) for k, v in dict(stored.get("params", {})).items()}


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _read_probe(stored: Mapping[str, Any]) -> pd.DataFrame:
    table = _frame(stored["table"], stored.get("columns", _PROBE_COLUMNS))
    table["metric"] = table["metric"].astype(str)
    folds = _frame(
        stored["folds"], _FOLD_COLUMNS if set(stored["folds"]) == set(_FOLD_COLUMNS) else None
    )
    if "metric" in folds:
        folds["metric"] = folds["metric"].astype(str)
    table.attrs = {
        "folds": {c: folds[c].tolist() for c in folds.columns},
        "classes": [str(c) for c in np.atleast_1d(stored.get("classes", []))],
        **_params(stored),
    }
    return table


def _read_retrieval(stored: Mapping[str, Any]) -> pd.DataFrame:
    table = _frame(stored["table"], stored.get("columns", _RETRIEVAL_COLUMNS))
    table["cell_type"] = table["cell_type"].astype(str)
    table = table.set_index("cell_type").astype(np.float64)
    table.attrs = _params(stored)
    return table


def _read_neighbors(stored: Mapping[str, Any]) -> dict[str, Any]:
    params = _params(stored)
    key = str(params.get("key", ""))
    labels = [str(c) for c in np.atleast_1d(stored["labels"])]
    table = pd.DataFrame(
        np.asarray(stored["counts"], dtype=np.int64).reshape(len(labels), len(labels)),
        index=pd.Index(labels, name=key),
        columns=pd.Index(labels, name=f"neighbour {key}"),
    )
    samples = pd.Index([str(s) for s in np.atleast_1d(stored["samples"])])
    return neighbor_result(
        table,
        neighbors=pd.Series(
            [str(s) for s in np.atleast_1d(stored["neighbors"])], index=samples, name="nearest"
        ),
        agreement=float(stored["agreement"]),
        chance=float(stored["chance"]),
        params=params,
    )


def neighbor_result(
    table: pd.DataFrame,
    *,
    neighbors: pd.Series,
    agreement: float,
    chance: float,
    params: dict[str, Any],
) -> dict[str, Any]:
    """The result dict of ``mst.tl.nn_contingency`` from its counts and neighbours."""
    props = table.div(table.sum(axis=1).replace(0, np.nan), axis=0)
    return {
        "table": table,
        "proportions": props,
        "agreement": agreement,
        "chance": chance,
        "per_label": pd.Series(
            np.diag(props.to_numpy()), index=list(table.index), name="agreement"
        ),
        "neighbors": neighbors,
        "n": len(neighbors),
        "key": params.get("key"),
        "use_rep": params.get("use_rep"),
        "params": params,
    }


_READERS = {PROBE: _read_probe, RETRIEVAL: _read_retrieval, NEIGHBORS: _read_neighbors}


def result_df(sdata: Any, key: str) -> pd.DataFrame:
    """A stored evaluation result as a DataFrame (like ``sc.get.rank_genes_groups_df``).

    Reads what :func:`~maestro_sc.tl.linear_probe`, :func:`~maestro_sc.tl.celltype_retrieval`
    or :func:`~maestro_sc.tl.nn_contingency` stored in ``sdata.uns[key]`` (also after an
    ``.h5ad`` round trip).

    Parameters
    ----------
    sdata
        The sample-level AnnData the tool wrote into.
    key
        Key of ``sdata.uns``: the tool's ``key_added``, by default
        ``f"probe_{target}_{use_rep}"``, ``f"retrieval_{cell_type_key}_{use_rep}"`` or
        ``f"nn_{key}_{use_rep}"``.

    Returns
    -------
    The table the tool returns with ``inplace=False``: for a linear probe one row per metric
    (``metric``, ``mean``, ``std``, ``n_folds``, ``chance``; ``attrs`` hold the per-fold values,
    the classes and the parameters); for a cell-type retrieval one row per cell type and
    ``"(mean)"``; for a nearest-neighbour table the counts (true label × neighbour's label), with
    ``agreement``, ``chance``, ``n`` and the parameters in ``attrs``.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=16, random_state=0)
    >>> sdata = mst.tl.baseline_means(adata, "sample")
    >>> mst.tl.linear_probe(sdata, "diagnosis", use_rep="X_means", n_repeats=1)
    >>> df = mst.get.result_df(sdata, "probe_diagnosis_X_means")
    >>> df["metric"].tolist()[:3]
    ['accuracy', 'auroc', 'f1']
    """
    result = load_result(sdata, key)
    if isinstance(result, pd.DataFrame):
        return result
    table = result["table"].copy()
    table.attrs = {
        "agreement": result["agreement"],
        "chance": result["chance"],
        "n": result["n"],
        **result["params"],
    }
    return table
