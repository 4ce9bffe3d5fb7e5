"""Baseline sample representations the paper compares MAESTRO with (paper 4.4, F.3, F.5).

Each ``baseline_*`` function returns the same sample-level AnnData as
:func:`maestro_sc.tl.aggregate_samples` (one row per sample, pseudobulk means in ``X``) with its
representation in ``obsm[key_added]``, so the evaluation functions treat MAESTRO and the
baselines alike. :func:`add_baselines` writes several of them into an existing sample AnnData.
Every method is computed through the registry in :mod:`maestro_sc.tl._baseline_methods`; cells
are read one sample at a time through :class:`~maestro_sc._data.SampleIndex`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._data import SampleIndex
from .._utils import warn_overwrite
from ._aggregate import sample_table
from ._baseline_methods import (
    BASELINES,
    DEFAULT_METHODS,
    DEFAULT_QUANTILES,
    Cells,
    PlannedBaseline,
    find_baseline,
    plan_baseline,
    prepare_baseline,
    run_baseline,
)

_KMEANS = BASELINES["kmeans"].defaults
_FLOWSOM = BASELINES["flowsom"].defaults


def _store(sdata: Any, key: str, rep: np.ndarray, features: list[str], info: dict) -> None:
    warn_overwrite(sdata.obsm, key, "sdata.obsm")
    sdata.obsm[key] = np.asarray(rep, dtype=np.float32)
    baselines = dict(sdata.uns.get("baselines", {}))
    baselines[key] = {**info, "features": np.asarray(features, dtype=object)}
    sdata.uns["baselines"] = baselines


def _one_baseline(
    method: str,
    params: Mapping[str, Any],
    adata: Any,
    sample_key: str,
    key_added: str | None,
    markers: Sequence[str] | None,
    layer: str | None,
    mod: str | None,
) -> Any:
    """Check the parameters, index the cells, compute one baseline into a new sample table."""
    planned = plan_baseline(method, params, key_added)
    index = SampleIndex(adata, sample_key, markers=markers, layer=layer, mod=mod)
    sdata = sample_table(index)
    if mod is not None:
        sdata.uns["maestro"]["mod"] = mod
    prepared = prepare_baseline(planned, Cells(adata, sample_key, mod))
    rep, features, info = run_baseline(planned, index, prepared)
    _store(sdata, planned.key, rep, features, info)
    return sdata


def baseline_means(
    adata: Any,
    sample_key: str,
    *,
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    key_added: str | None = None,
) -> Any:
    """Per-marker mean of each sample's cells (pseudobulk) as a representation.

    Parameters
    ----------
    adata
        AnnData of cells (in memory or backed), or a MuData with ``mod=``.
    sample_key
        Column of ``obs`` with the sample id of each cell.
    markers
        Markers to use (default: all ``var_names``).
    layer
        Use ``adata.layers[layer]`` instead of ``X``.
    mod
        Modality of a MuData holding the markers.
    key_added
        Key of ``obsm`` for the representation (default ``"X_means"``).

    Returns
    -------
    Sample-level AnnData (as :func:`maestro_sc.tl.aggregate_samples`) with
    ``obsm[key_added]`` of shape ``(samples, markers)`` and its feature names in
    ``uns["baselines"][key_added]["features"]``.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=8, random_state=0)
    >>> sdata = mst.tl.baseline_means(adata, "sample")
    >>> sdata.obsm["X_means"].shape[0]
    8
    """
    return _one_baseline("means", {}, adata, sample_key, key_added, markers, layer, mod)


def baseline_quantiles(
    adata: Any,
    sample_key: str,
    *,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    key_added: str | None = None,
) -> Any:
    """Per-marker mean and quantiles of each sample's cells as a representation.

    Parameters
    ----------
    adata
        AnnData of cells (in memory or backed), or a MuData with ``mod=``.
    sample_key
        Column of ``obs`` with the sample id of each cell.
    quantiles
        Quantiles per marker, beside the mean.
    markers, layer, mod
        As in :func:`baseline_means`.
    key_added
        Key of ``obsm`` for the representation (default ``"X_quantiles"``).

    Returns
    -------
    Sample-level AnnData with ``obsm[key_added]`` of shape
    ``(samples, markers × (1 + len(quantiles)))``: all means first, then one block of markers per
    quantile.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=8, random_state=0)
    >>> sdata = mst.tl.baseline_quantiles(adata, "sample")
    >>> sdata.obsm["X_quantiles"].shape[1] == 6 * sdata.n_vars
    True
    """
    params = {"quantiles": tuple(quantiles)}
    return _one_baseline("quantiles", params, adata, sample_key, key_added, markers, layer, mod)


def baseline_kmeans(
    adata: Any,
    sample_key: str,
    n_clusters: int = _KMEANS["n_clusters"],
    *,
    n_fit_cells: int = _KMEANS["n_fit_cells"],
    batch_size: int = _KMEANS["batch_size"],
    random_state: int = _KMEANS["random_state"],
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    key_added: str | None = None,
    log_ratio: bool = False,
) -> Any:
    """K-means cluster proportions per sample (paper F.3; the paper used k = 512 and 1024).

    ``MiniBatchKMeans`` is fitted on ``n_fit_cells`` cells drawn uniformly from all cells of all
    samples; then every cell of every sample is assigned to its nearest centre and each sample
    is represented by the fraction of its cells in each cluster.

    Parameters
    ----------
    adata
        AnnData of cells (in memory or backed), or a MuData with ``mod=``.
    sample_key
        Column of ``obs`` with the sample id of each cell.
    n_clusters
        Number of clusters k.
    n_fit_cells
        Cells pooled over samples to fit the centres (all cells when there are fewer).
    batch_size
        Mini-batch size of the k-means fit.
    random_state
        Seed of the subsample and of k-means.
    markers, layer, mod
        As in :func:`baseline_means`.
    key_added
        Key of ``obsm`` (default ``f"X_kmeans{n_clusters}"``, ``f"X_kmeans_clr{n_clusters}"``
        with ``log_ratio``).
    log_ratio
        Fit the clusters on standardised markers (each marker centred and scaled to unit
        variance over the fitted cells) and represent each sample by its centred log-ratio
        composition ``log(p + 1/(4k)) - mean_k log(p + 1/(4k))``, the stronger form of this
        baseline for linear probes (``"kmeans_clr<k>"`` in :func:`add_baselines`).

    Returns
    -------
    Sample-level AnnData with ``obsm[key_added]`` of shape ``(samples, n_clusters)``; rows sum
    to 1 (to 0 with ``log_ratio``).

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=8, random_state=0)
    >>> sdata = mst.tl.baseline_kmeans(adata, "sample", n_clusters=16)
    >>> sdata.obsm["X_kmeans16"].shape[1]
    16
    """
    params = {
        "n_clusters": n_clusters,
        "n_fit_cells": n_fit_cells,
        "batch_size": batch_size,
        "random_state": random_state,
    }
    method = "kmeans_clr" if log_ratio else "kmeans"
    return _one_baseline(method, params, adata, sample_key, key_added, markers, layer, mod)


def baseline_flowsom(
    adata: Any,
    sample_key: str,
    n_clusters: int = _FLOWSOM["n_clusters"],
    *,
    xdim: int = _FLOWSOM["xdim"],
    ydim: int = _FLOWSOM["ydim"],
    rlen: int = _FLOWSOM["rlen"],
    level: str = _FLOWSOM["level"],
    n_fit_cells: int = _FLOWSOM["n_fit_cells"],
    random_state: int = _FLOWSOM["random_state"],
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    key_added: str | None = None,
) -> Any:
    """FlowSOM metacluster proportions per sample (the ``flowsom`` package).

    A ``xdim × ydim`` self-organising map and its consensus metaclustering into ``n_clusters``
    groups are fitted on ``n_fit_cells`` cells pooled over samples; then every cell is mapped to
    its nearest node and each sample is represented by the fraction of its cells in each
    metacluster (or each SOM node with ``level="cluster"``).

    Parameters
    ----------
    adata
        AnnData of cells (in memory or backed), or a MuData with ``mod=``.
    sample_key
        Column of ``obs`` with the sample id of each cell.
    n_clusters
        Number of metaclusters.
    xdim, ydim
        Size of the SOM grid.
    rlen
        Passes over the fitting cells when training the SOM.
    level
        ``"metacluster"`` (``n_clusters`` features) or ``"cluster"`` (``xdim × ydim``).
    n_fit_cells
        Cells pooled over samples to fit the SOM (all cells when there are fewer).
    random_state
        Seed of the subsample and of the SOM.
    markers, layer, mod
        As in :func:`baseline_means`.
    key_added
        Key of ``obsm`` for the representation (default ``"X_flowsom"``).

    Returns
    -------
    Sample-level AnnData with the proportions in ``obsm[key_added]``; rows sum to 1.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=8, random_state=0)
    >>> sdata = mst.tl.baseline_flowsom(adata, "sample", n_clusters=8)  # doctest: +SKIP
    >>> sdata.obsm["X_flowsom"].shape[1]  # doctest: +SKIP
    8
    """
    params = {
        "n_clusters": n_clusters,
        "xdim": xdim,
        "ydim": ydim,
        "rlen": rlen,
        "level": level,
        "n_fit_cells": n_fit_cells,
        "random_state": random_state,
    }
    return _one_baseline("flowsom", params, adata, sample_key, key_added, markers, layer, mod)


def baseline_gated(
    adata: Any,
    sample_key: str,
    cell_type_key: str,
    *,
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    key_added: str | None = None,
) -> Any:
    """Proportions of given (gated) cell types per sample as a representation.

    Cells with a missing cell type are left out of the denominators. Leave this baseline out of
    :func:`~maestro_sc.tl.celltype_retrieval` with the same key: it is the target (paper F.5).

    Parameters
    ----------
    adata
        AnnData of cells (in memory or backed), or a MuData with ``mod=``.
    sample_key
        Column of ``obs`` with the sample id of each cell.
    cell_type_key
        Column of ``obs`` with each cell's type.
    markers, layer, mod
        As in :func:`baseline_means` (used for the pseudobulk ``X``).
    key_added
        Key of ``obsm`` for the representation (default ``"X_gated"``).

    Returns
    -------
    Sample-level AnnData with ``obsm[key_added]`` of shape ``(samples, cell types)``; rows sum
    to 1.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=8, random_state=0)
    >>> sdata = mst.tl.baseline_gated(adata, "sample", "cell_type")
    >>> sdata.obsm["X_gated"].sum(axis=1).round(3).tolist()[:2]
    [1.0, 1.0]
    """
    params = {"cell_type_key": cell_type_key}
    return _one_baseline("gated", params, adata, sample_key, key_added, markers, layer, mod)


def add_baselines(
    sdata: Any,
    adata: Any,
    sample_key: str,
    methods: Sequence[str] | None = None,
    *,
    cell_type_key: str | None = None,
    n_fit_cells: int = _KMEANS["n_fit_cells"],
    random_state: int = _KMEANS["random_state"],
    method_kwargs: dict[str, dict] | None = None,
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
) -> None:
    """Compute baseline representations and write them into an existing sample AnnData.

    Each representation goes to ``sdata.obsm["X_<method>"]`` (``X_kmeans<k>`` for k-means),
    aligned by ``sdata.obs_names`` (sample ids); its feature names, parameters and wall time go to
    ``sdata.uns["baselines"][key]``. The cells are indexed once for all methods.

    Parameters
    ----------
    sdata
        Sample-level AnnData (e.g. from :func:`~maestro_sc.tl.embed_samples`); modified in place.
    adata
        AnnData of cells (in memory or backed), or a MuData with ``mod=``; must hold every
        sample of ``sdata``.
    sample_key
        Column of ``obs`` with the sample id of each cell.
    methods
        Names among ``"means"``, ``"quantiles"``, ``"kmeans"`` (k = 32), ``"kmeans<k>"``
        (e.g. ``"kmeans128"``), ``"kmeans_clr<k>"`` (``log_ratio=True`` of
        :func:`baseline_kmeans`), ``"flowsom"`` (20 metaclusters), ``"flowsom<k>"`` and
        ``"gated"``. Default: ``("means", "quantiles", "kmeans32", "kmeans128",
        "kmeans_clr32", "kmeans_clr128", "flowsom")``, plus ``"gated"`` when ``cell_type_key``
        is given.
    cell_type_key
        Column of the cells' ``obs`` with cell types, for ``"gated"``.
    n_fit_cells
        Cells pooled over samples to fit k-means and FlowSOM.
    random_state
        Seed of every random step.
    method_kwargs
        Arguments per method name, as the matching ``baseline_*`` function takes them (and
        ``key_added``), e.g. ``{"flowsom": {"n_clusters": 20}}``; an argument the method does
        not have is a ``TypeError``.
    markers, layer, mod
        As in :func:`baseline_means`.

    Returns
    -------
    ``None``; ``sdata`` is updated.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=8, random_state=0)
    >>> sdata = mst.tl.aggregate_samples(adata, "sample")
    >>> mst.tl.add_baselines(sdata, adata, "sample", methods=["means", "kmeans16"])
    >>> sorted(sdata.obsm.keys())
    ['X_kmeans16', 'X_means']
    """
    from anndata import AnnData

    if not isinstance(sdata, AnnData):
        raise TypeError(
            f"`sdata` must be a sample-level AnnData, got {type(sdata).__name__}. "
            "Build one with mst.tl.aggregate_samples."
        )
    if methods is None:
        methods = [*DEFAULT_METHODS, *(["gated"] if cell_type_key is not None else [])]
    elif isinstance(methods, str):
        methods = [methods]
    method_kwargs = dict(method_kwargs or {})
    unknown_kw = [k for k in method_kwargs if k not in methods]
    if unknown_kw:
        raise ValueError(f"`method_kwargs` names methods {unknown_kw} that are not in {methods}.")
    shared = {"n_fit_cells": n_fit_cells, "random_state": random_state}
    if cell_type_key is not None:
        shared["cell_type_key"] = cell_type_key
    plan: list[PlannedBaseline] = []
    for name in methods:
        own = dict(method_kwargs.get(name, {}))
        key = own.pop("key_added", None)
        method, _ = find_baseline(name)
        params = {k: v for k, v in shared.items() if k in method.defaults}
        plan.append(plan_baseline(name, {**params, **own}, key))

    index = SampleIndex(adata, sample_key, markers=markers, layer=layer, mod=mod)
    names = [str(s) for s in sdata.obs_names]
    known = set(index.sample_ids)
    missing = [s for s in names if s not in known]
    if missing:
        raise KeyError(
            f"{len(missing)} samples of sdata are not in the cells' obs[{sample_key!r}]: "
            f"{missing[:10]}. Pass the cells sdata was built from and the same sample_key."
        )
    position = {s: i for i, s in enumerate(index.sample_ids)}
    rows = np.asarray([position[s] for s in names])
    cells = Cells(adata, sample_key, mod)
    prepared = [prepare_baseline(planned, cells) for planned in plan]
    for planned, ready in zip(plan, prepared, strict=True):
        rep, features, info = run_baseline(planned, index, ready)
        _store(sdata, planned.key, rep[rows], features, info)
