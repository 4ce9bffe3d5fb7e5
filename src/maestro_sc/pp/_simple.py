"""Transforms on cells: arcsinh, marker selection, sample filtering and subsampling."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._data import SampleIndex
from .._utils import (
    check_count,
    check_random_state,
    check_var_names,
    get_matrix,
    is_real,
    logger,
    marker_positions,
    resolve_cells,
    validate_cells,
)
from ..model.config import MaestroConfig
from ._common import dense_float, float_dtype, set_matrix, subset_inplace, sync_mudata, writable

#: Name patterns of channels that are not markers (scatter, time, event length, DNA/viability
#: stains, beads); matched case-insensitively as substrings of ``var_names`` and ``var["channel"]``.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    "FSC", "SSC", "Time", "Event", "Center", "Offset", "Width", "Residual", "Bead", "DNA",
    "Viability", "Cisplatin", "LiveDead", "Live_Dead", "Live/Dead",
)  # fmt: skip


#: The training default (:attr:`MaestroConfig.min_cells <maestro_sc.model.config.MaestroConfig>`):
#: a sample with fewer cells is skipped by training, so filtering keeps what training uses.
_MIN_CELLS: int = MaestroConfig.__dataclass_fields__["min_cells"].default


def _cofactors(cofactor: float | Mapping[str, float], markers: list[str]) -> np.ndarray:
    if isinstance(cofactor, Mapping):
        missing = [m for m in markers if m not in cofactor]
        if missing:
            raise KeyError(
                f"`cofactor` is a dict but has no value for markers {missing}; add them or pass "
                "`markers=` listing only the markers to transform."
            )
        wrong = {m: cofactor[m] for m in markers if not is_real(cofactor[m])}
        if wrong:
            raise TypeError(f"Cofactors must be numbers; the dict `cofactor` holds {wrong}.")
        values = np.array([cofactor[m] for m in markers], dtype=np.float64)
    elif is_real(cofactor):
        values = np.full(len(markers), cofactor, dtype=np.float64)
    else:
        raise TypeError(
            f"`cofactor` must be a number (5 for mass, ~150 for flow cytometry) or a dict "
            f"{{marker: cofactor}}, got {cofactor!r} ({type(cofactor).__name__})."
        )
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        names = [f"{m}={v}" for m, v, b in zip(markers, values, bad) if b]
        raise ValueError(f"Cofactors must be finite and > 0; got {names}.")
    return values


def _entry_columns(mat: sparse.spmatrix | sparse.sparray) -> np.ndarray:
    """Column index of each stored entry of a CSR/CSC matrix."""
    if mat.format == "csr":
        return mat.indices
    return np.repeat(np.arange(mat.shape[1]), np.diff(mat.indptr))


def arcsinh(
    adata: Any,
    cofactor: float | Mapping[str, float] = 5.0,
    *,
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    copy: bool = False,
    mod: str | None = None,
) -> Any | None:
    """Transform marker values to ``arcsinh(x / cofactor)``.

    Use cofactor 5 for mass cytometry and about 150 for flow cytometry. Integer data
    become float32; other float dtypes are kept; sparse data stay sparse (arcsinh(0) = 0). The
    markers and cofactors used are recorded in ``uns["arcsinh"]``; transforming a marker twice
    warns.

    Parameters
    ----------
    adata
        AnnData of cells, or a MuData with ``mod=``.
    cofactor
        One cofactor for every marker, or a dict ``{marker: cofactor}``.
    markers
        Markers to transform (default: every marker, or the dict's keys when ``cofactor`` is a
        dict). Other columns are left as they are.
    layer
        Transform ``adata.layers[layer]`` instead of ``X``.
    copy
        Return a transformed copy and leave the input unchanged; otherwise transform in place
        and return ``None``.
    mod
        Modality of a MuData holding the markers.

    Returns
    -------
    The transformed copy if ``copy=True``, else ``None``.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> import maestro_sc as mst
    >>> adata = ad.AnnData(np.array([[0.0, 5.0], [50.0, -5.0]], dtype=np.float32))
    >>> mst.pp.arcsinh(adata, cofactor=5)
    >>> [round(float(v), 3) for v in adata.X[0]]
    [0.0, 0.881]
    """
    if markers is None and isinstance(cofactor, Mapping):
        markers = list(cofactor)
    target, _, cols = validate_cells(adata, None, markers=markers, layer=layer, mod=mod)
    names = [str(m) for m in target.var_names[cols]]
    cof = _cofactors(cofactor, names)
    previous = target.uns.get("arcsinh", {})
    again = sorted(set(names) & set(np.asarray(previous.get("markers", []), dtype=str).tolist()))
    if again and previous.get("layer", "") == (layer or ""):
        warnings.warn(
            f"uns['arcsinh'] says markers {again} were already arcsinh-transformed; transforming "
            "twice compresses the values. Skip this call if the data are already transformed.",
            UserWarning,
            stacklevel=2,
        )

    out, target, _ = writable(adata, mod, copy)
    mat = get_matrix(target, layer)
    dtype = float_dtype(mat.dtype)
    if sparse.issparse(mat):
        if mat.format not in ("csr", "csc"):
            mat = mat.tocsr()
        mat = mat.astype(dtype, copy=mat.dtype != dtype)
        per_column = np.full(mat.shape[1], np.nan)
        per_column[cols] = cof
        entry_cof = per_column[_entry_columns(mat)]
        sel = ~np.isnan(entry_cof)
        mat.data[sel] = np.arcsinh(mat.data[sel] / entry_cof[sel])
    else:
        mat = dense_float(mat)
        mat[:, cols] = np.arcsinh(mat[:, cols] / cof.astype(dtype))
    set_matrix(target, layer, mat)
    record = dict(zip(np.asarray(previous.get("markers", []), dtype=str).tolist(),
                      np.asarray(previous.get("cofactors", []), dtype=float).tolist()))  # fmt: skip
    record.update(zip(names, cof.tolist()))
    target.uns["arcsinh"] = {
        "markers": list(record),
        "cofactors": list(record.values()),
        "layer": layer or "",
    }
    logger.info("arcsinh: %d markers, cofactor %s", len(names), cofactor)
    return out


def pattern_markers(adata: Any, exclude_patterns: Sequence[str] = DEFAULT_EXCLUDE) -> list[str]:
    """``var_names`` whose name (or ``var["channel"]``) matches none of ``exclude_patterns``."""
    if exclude_patterns is None:
        exclude_patterns = ()
    if isinstance(exclude_patterns, str):
        exclude_patterns = (exclude_patterns,)
    wrong = [p for p in exclude_patterns if not isinstance(p, str)]
    if wrong:
        raise TypeError(
            f"`exclude_patterns` must be strings (substrings of channel names), got {wrong}."
        )
    rx = (
        re.compile("|".join(re.escape(p) for p in exclude_patterns), re.IGNORECASE)
        if exclude_patterns
        else None
    )
    channels = adata.var["channel"].astype(str) if "channel" in adata.var.columns else None
    keep = []
    for i, name in enumerate(adata.var_names):
        texts = [str(name)] + ([channels.iloc[i]] if channels is not None else [])
        if rx is None or not any(rx.search(t) for t in texts):
            keep.append(str(name))
    return keep


def _markers_by_column(adata: Any, var_column: str, value: Any) -> list[str]:
    if var_column not in adata.var.columns:
        raise KeyError(
            f"var_column {var_column!r} is not a column of adata.var. Available: "
            f"{list(adata.var.columns)}."
        )
    col = adata.var[var_column]
    if value is None:
        if not pd.api.types.is_bool_dtype(col):
            raise ValueError(
                f"var[{var_column!r}] is not boolean; pass `value=` (e.g. value='marker'). Its "
                f"values: {sorted(map(str, col.unique()))[:20]}."
            )
        keep = col.to_numpy(dtype=bool)
    else:
        values = (
            [value] if isinstance(value, str) or not isinstance(value, Sequence) else list(value)
        )
        keep = col.isin(values).to_numpy()
    return [str(m) for m in adata.var_names[keep]]


def select_markers(
    adata: Any,
    markers: Sequence[str] | None = None,
    *,
    exclude_patterns: Sequence[str] = DEFAULT_EXCLUDE,
    var_column: str | None = None,
    value: Any = None,
    copy: bool = False,
    mod: str | None = None,
) -> Any | None:
    """Keep only the marker channels (drop scatter, time and other non-marker channels).

    The columns kept are, by priority: ``markers`` if given (in that order); else those whose
    ``var[var_column]`` equals ``value`` (or is in it, for a list; or is ``True`` for a boolean
    column); else every channel whose name or ``var["channel"]`` contains none of
    ``exclude_patterns`` (case-insensitive). As ``sc.pp.filter_genes`` does, the AnnData is
    subset in place (columns removed) and ``None`` returned; with ``copy=True`` a new AnnData is
    returned and the input is left as it is. For only the names, use
    :func:`maestro_sc.datasets.marker_channels` or ``adata.var_names`` after a copy.

    Parameters
    ----------
    adata
        AnnData of cells, or a MuData with ``mod=``.
    markers
        Marker names to keep, in this order.
    exclude_patterns
        Substrings marking non-marker channels (used when neither ``markers`` nor
        ``var_column`` is given). Default: :data:`DEFAULT_EXCLUDE` (FSC, SSC, Time, Event, …).
    var_column
        A ``var`` column saying which channels are markers (e.g. ``"type"``).
    value
        The value(s) of ``var[var_column]`` to keep (e.g. ``"marker"``).
    copy
        Return a new AnnData instead of subsetting in place.
    mod
        Modality of a MuData holding the markers.

    Returns
    -------
    The restricted copy if ``copy=True``, else ``None``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata as ad
    >>> import maestro_sc as mst
    >>> adata = ad.AnnData(np.ones((3, 4), dtype=np.float32),
    ...                    var=pd.DataFrame(index=["FSC-A", "SSC-A", "CD3", "Time"]))
    >>> mst.pp.select_markers(adata)
    >>> adata.var_names.tolist()
    ['CD3']
    """
    target, _ = resolve_cells(adata, mod)
    check_var_names(target)
    if markers is not None:
        keep = [str(target.var_names[c]) for c in marker_positions(target, markers)]
        how = "the given list"
    elif var_column is not None:
        keep = _markers_by_column(target, var_column, value)
        how = f"var[{var_column!r}] == {value!r}"
    else:
        keep = pattern_markers(target, exclude_patterns)
        how = f"name patterns {exclude_patterns!r}"
    if not keep:
        raise ValueError(
            f"No marker left after selecting by {how}; the channels are {list(target.var_names)}. "
            "Pass `markers=` or adjust `exclude_patterns`/`var_column`."
        )
    dropped = [str(m) for m in target.var_names if m not in set(keep)]
    out, target, mdata = writable(adata, mod, copy)
    if keep != [str(m) for m in target.var_names]:
        target._inplace_subset_var(target.var_names.get_indexer(keep))
    sync_mudata(mdata)
    logger.info("select_markers: kept %d markers by %s; dropped %s", len(keep), how, dropped)
    return out


def filter_samples(
    adata: Any,
    sample_key: str,
    min_cells: int = _MIN_CELLS,
    *,
    copy: bool = False,
    mod: str | None = None,
) -> Any | None:
    """Drop the samples with fewer than ``min_cells`` cells (and log which).

    Unused categories of ``obs[sample_key]`` are removed. A backed AnnData with ``copy=True``
    reads only the kept cells into memory.

    Parameters
    ----------
    adata
        AnnData of cells, or a MuData with ``mod=``.
    sample_key
        Column of ``obs`` with the sample id of each cell.
    min_cells
        Smallest number of cells a sample must have to be kept (default: training's
        ``MaestroConfig.min_cells``, below which training skips a sample).
    copy
        Return a filtered copy instead of filtering in place.
    mod
        Modality of a MuData holding the cells.

    Returns
    -------
    The filtered copy if ``copy=True``, else ``None``.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=6, cells_per_sample=(50, 500))
    >>> mst.pp.filter_samples(adata, "sample", min_cells=100)
    """
    check_count(min_cells, "min_cells", minimum=0)
    index = SampleIndex(adata, sample_key, mod=mod, check_values=False)
    small = index.counts < min_cells
    if small.all():
        sizes = dict(zip(index.sample_ids, index.counts.tolist()))
        raise ValueError(
            f"No sample has at least min_cells={min_cells} cells; zero cells would be left. "
            f"Sample sizes: {sizes}. Lower `min_cells`."
        )
    dropped = {s: int(c) for s, c, b in zip(index.sample_ids, index.counts, small) if b}
    if dropped:
        logger.warning(
            "filter_samples: dropping %d samples with < %d cells: %s",
            len(dropped),
            min_cells,
            dropped,
        )
    keep_rows = ~small[index.codes]
    return _keep_rows(adata, mod, copy, keep_rows, sample_key)


def _keep_rows(
    adata: Any, mod: str | None, copy: bool, keep_rows: np.ndarray, sample_key: str
) -> Any | None:
    from anndata import AnnData

    if copy and isinstance(adata, AnnData) and adata.isbacked:
        out = adata[np.flatnonzero(keep_rows)].to_memory()
        target, mdata = out, None
    else:
        out, target, mdata = writable(adata, mod, copy)
        subset_inplace(target, mdata, obs=keep_rows)
    col = target.obs.get(sample_key)
    if col is not None and isinstance(col.dtype, pd.CategoricalDtype):
        target.obs[sample_key] = col.cat.remove_unused_categories()
    return out


def subsample(
    adata: Any,
    sample_key: str,
    n_cells: int,
    *,
    random_state: int | np.random.Generator | None = 0,
    copy: bool = False,
    mod: str | None = None,
) -> Any | None:
    """Keep at most ``n_cells`` random cells of each sample (smaller samples are kept whole).

    The cells kept stay in their original order. A backed AnnData with ``copy=True`` reads only
    the kept cells into memory.

    Parameters
    ----------
    adata
        AnnData of cells, or a MuData with ``mod=``.
    sample_key
        Column of ``obs`` with the sample id of each cell.
    n_cells
        Largest number of cells per sample.
    random_state
        Seed (or generator) of the draw; the same seed keeps the same cells.
    copy
        Return a subsampled copy instead of subsampling in place.
    mod
        Modality of a MuData holding the cells.

    Returns
    -------
    The subsampled copy if ``copy=True``, else ``None``.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=4, random_state=0)
    >>> small = mst.pp.subsample(adata, "sample", n_cells=200, copy=True)
    >>> small.n_obs
    800
    """
    check_count(n_cells, "n_cells")
    check_random_state(random_state, generator=True, none=True)
    index = SampleIndex(adata, sample_key, mod=mod, check_values=False)
    rng = np.random.default_rng(random_state)
    keep_rows = np.zeros(index.adata.n_obs, dtype=bool)
    for i in range(index.n_samples):
        keep_rows[index.subset_positions(i, int(n_cells), rng)] = True
    logger.info(
        "subsample: %d of %d cells kept (at most %d per sample)",
        keep_rows.sum(),
        len(keep_rows),
        n_cells,
    )
    return _keep_rows(adata, mod, copy, keep_rows, sample_key)
