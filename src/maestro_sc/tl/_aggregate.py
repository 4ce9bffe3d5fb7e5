"""The sample-level AnnData: one row per sample."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._data import SampleIndex


def constant_obs(
    obs: pd.DataFrame, codes: np.ndarray, first_rows: np.ndarray
) -> tuple[pd.DataFrame, list[str]]:
    """Columns of ``obs`` constant within every sample, one row per sample; and the dropped ones."""
    keep, dropped = [], []
    for col in obs.columns:
        values = obs[col]
        try:
            nunique = values.groupby(codes, sort=False, observed=True).nunique(dropna=False)
        except TypeError:
            # Unhashable cells (lists, dicts) cannot be compared, so the column is not kept.
            dropped.append(col)
            continue
        (keep if (nunique <= 1).all() else dropped).append(col)
    table = obs.iloc[first_rows][keep].copy()
    for col in keep:
        if isinstance(table[col].dtype, pd.CategoricalDtype):
            # Keep the input's categories (and their order), even those no sample uses.
            table[col] = pd.Categorical(
                table[col], categories=obs[col].cat.categories, ordered=obs[col].cat.ordered
            )
    return table, dropped


def sample_table(index: SampleIndex, *, means: bool = True) -> Any:
    """Build the sample-level AnnData from a :class:`SampleIndex` (no embedding yet)."""
    from anndata import AnnData

    obs_cells = index.adata.obs
    table, dropped = constant_obs(obs_cells, index.codes, index.first_positions())
    table.index = pd.Index(index.sample_ids, name=None)
    if index.sample_key in table.columns:
        table[index.sample_key] = table[index.sample_key].astype(str).astype("category")
        table[index.sample_key] = table[index.sample_key].cat.reorder_categories(index.sample_ids)
    table["n_cells"] = index.counts
    X = (
        index.sample_means().astype(np.float32)
        if means
        else np.zeros((index.n_samples, index.n_markers), np.float32)
    )
    var = pd.DataFrame(index=pd.Index(index.markers))
    sdata = AnnData(X=X, obs=table, var=var)
    sdata.uns["maestro"] = {"sample_key": index.sample_key, "dropped_obs": list(dropped)}
    return sdata


def aggregate_samples(
    adata: Any,
    sample_key: str,
    *,
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
) -> Any:
    """Build a sample-level AnnData (pseudobulk) from an AnnData of cells.

    One row per sample, in the order of first appearance in ``obs``. ``X`` holds the per-sample
    mean of each marker; ``obs`` holds ``n_cells`` and every cell-level ``obs`` column that is
    constant within every sample (with its dtype and categories). Columns that vary within a
    sample are listed in ``uns["maestro"]["dropped_obs"]``. The input is not modified.

    Parameters
    ----------
    adata
        AnnData of cells (in memory or backed), or a MuData with ``mod=``.
    sample_key
        Column of ``obs`` with the sample id of each cell.
    markers
        Markers to average (default: all ``var_names``).
    layer
        Use ``adata.layers[layer]`` instead of ``X``.
    mod
        Modality of a MuData holding the markers.

    Returns
    -------
    AnnData with one row per sample; ``obs_names`` are the sample ids as strings.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=8, random_state=0)
    >>> sdata = mst.tl.aggregate_samples(adata, sample_key="sample")
    >>> sdata.n_obs
    8
    """
    index = SampleIndex(adata, sample_key, markers=markers, layer=layer, mod=mod)
    sdata = sample_table(index)
    if mod is not None:
        sdata.uns["maestro"]["mod"] = mod
    return sdata
