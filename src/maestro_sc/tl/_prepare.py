"""Data preparation shared by the evaluation and the baselines.

Reads what they compute on from a sample-level AnnData (the representation in ``obsm``, label
columns of ``obs``, the samples to leave out) and from the cells (each sample's cell-type
proportions), with errors that name the problem and the fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._utils import is_real, logger, resolve_cells, sample_labels

#: Larger magnitudes overflow the sums of squares behind standardisation and R² in float64.
HUGE = 1e150


def check_penalty(value: Any, name: str, *, positive: bool) -> None:
    """Raise unless ``value`` is a finite number ``>= 0`` (``> 0`` with ``positive``)."""
    if not is_real(value):
        raise TypeError(f"`{name}` must be a number, got {value!r} ({type(value).__name__}).")
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"`{name}`={value} must be finite and {bound}.")


def get_representation(sdata: Any, use_rep: str) -> np.ndarray:
    """The ``(samples, features)`` matrix ``sdata.obsm[use_rep]`` (or ``X`` for ``"X"``)."""
    from anndata import AnnData

    if not isinstance(sdata, AnnData):
        raise TypeError(
            f"Expected a sample-level AnnData (one row per sample), got {type(sdata).__name__}. "
            "Build one with mst.tl.embed_samples or mst.tl.aggregate_samples."
        )
    if not isinstance(use_rep, str):
        raise TypeError(f"`use_rep` must be an obsm key (str), got {type(use_rep).__name__}.")
    if use_rep in sdata.obsm:
        rep = sdata.obsm[use_rep]
    elif use_rep == "X":
        rep = sdata.X
    else:
        raise KeyError(
            f"Representation {use_rep!r} is not in sdata.obsm (keys: {list(sdata.obsm.keys())}). "
            "Pass one of them as `use_rep`, or compute it first, e.g. with mst.tl.embed_samples "
            "or mst.tl.add_baselines."
        )
    if hasattr(rep, "toarray"):
        rep = rep.toarray()
    rep = np.asarray(rep, dtype=np.float64)
    if rep.ndim != 2:
        raise ValueError(f"Representation {use_rep!r} must be 2-D, got shape {rep.shape}.")
    if rep.shape[1] == 0:
        raise ValueError(f"Representation {use_rep!r} has no features (shape {rep.shape}).")
    if not np.isfinite(rep).all():
        bad = np.where(~np.isfinite(rep).all(axis=1))[0]
        names = [str(sdata.obs_names[i]) for i in bad[:10]]
        raise ValueError(
            f"Representation {use_rep!r} holds NaN/inf values in {len(bad)} samples "
            f"(e.g. {names}). Recompute it, or drop these samples with `exclude=`."
        )
    if rep.size and np.abs(rep).max() > HUGE:
        raise ValueError(
            f"Representation {use_rep!r} holds values up to {np.abs(rep).max():.3g}, too large "
            "to standardise in float64 (the squares overflow). Rescale it, e.g. divide it by "
            "its largest absolute value."
        )
    return rep


def obs_column(sdata: Any, key: str, what: str) -> pd.Series:
    """``sdata.obs[key]`` with an error listing the columns when it is missing."""
    if not isinstance(key, str):
        raise TypeError(f"`{what}` must be an obs column name (str), got {type(key).__name__}.")
    if key not in sdata.obs.columns:
        raise KeyError(
            f"{what} {key!r} is not a column of sdata.obs. Available columns: "
            f"{list(sdata.obs.columns)}."
        )
    return sdata.obs[key]


def exclude_mask(sdata: Any, exclude: Any) -> np.ndarray:
    """Boolean mask of the samples to keep, from ``exclude``.

    ``exclude`` is ``None``, a boolean mask over samples (``True`` = drop), an ``obs`` query
    string (``"sample_type == 'control'"``) or a list of sample names.
    """
    n = sdata.n_obs
    if exclude is None:
        return np.ones(n, dtype=bool)
    if isinstance(exclude, str):
        try:
            drop = sdata.obs.eval(exclude)
        except Exception as err:
            raise ValueError(
                f"`exclude={exclude!r}` is not a valid query on sdata.obs ({err}). Write it as "
                "for DataFrame.query, e.g. \"sample_type == 'control'\"."
            ) from err
        drop = np.asarray(drop)
        if drop.dtype != bool or drop.shape != (n,):
            raise ValueError(
                f"`exclude={exclude!r}` must evaluate to one boolean per sample, got "
                f"dtype {drop.dtype} and shape {drop.shape}."
            )
        return ~drop
    arr = np.asarray(exclude)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(
                f"A boolean `exclude` mask needs one value per sample ({n}), got shape {arr.shape}."
            )
        return ~arr
    names = [str(x) for x in np.atleast_1d(arr)]
    unknown = [x for x in names if x not in sdata.obs_names]
    if unknown:
        raise KeyError(
            f"`exclude` names samples that are not in sdata.obs_names: {unknown[:10]}. "
            "Pass sample names, a boolean mask or an obs query string."
        )
    return ~np.isin(sdata.obs_names.astype(str), names)


def celltype_proportions(
    cells: Any, sample_key: str, cell_type_key: str, *, mod: str | None = None
) -> pd.DataFrame:
    """Samples × cell types table of proportions (rows sum to 1), sample ids as strings.

    Cells with a missing cell type are left out of the denominators.
    """
    adata, mdata = resolve_cells(cells, mod)
    samples = sample_labels(adata, sample_key, mdata)
    in_obs = cell_type_key in adata.obs.columns or (
        mdata is not None and cell_type_key in mdata.obs.columns
    )
    if not isinstance(cell_type_key, str) or not in_obs:
        raise KeyError(
            f"cell_type_key {cell_type_key!r} is not a column of the cells' obs. Available "
            f"columns: {list(adata.obs.columns)}. Pass the column holding gated cell types."
        )
    types = sample_labels(adata, cell_type_key, mdata)
    if samples.isna().any():
        raise ValueError(
            f"{int(samples.isna().sum())} cells have no sample id in obs[{sample_key!r}]; "
            "drop them or fill the column first."
        )
    n_missing = int(types.isna().sum())
    if n_missing:
        logger.warning(
            "%d cells have no %r value; they are left out of the proportions.",
            n_missing,
            cell_type_key,
        )
    sample_order = pd.unique(samples.astype(str).to_numpy())
    if isinstance(types.dtype, pd.CategoricalDtype):
        type_order = [str(c) for c in types.cat.categories if (types == c).any()]
    else:
        type_order = sorted(str(t) for t in types.dropna().unique())
    counts = pd.crosstab(samples.astype(str).to_numpy(), types.astype(str).to_numpy())
    counts = counts.drop(columns=[c for c in counts.columns if c not in type_order])
    counts = counts.reindex(index=sample_order, columns=type_order, fill_value=0)
    totals = counts.sum(axis=1)
    empty = totals.index[totals == 0].tolist()
    if empty:
        raise ValueError(f"Samples {empty[:10]} have no cell with a {cell_type_key!r} value.")
    props = counts.div(totals, axis=0)
    props.index.name, props.columns.name = None, None
    return props
