"""Baseline sample representations the paper compares MAESTRO with (paper 4.4, F.3, F.5).

Each ``baseline_*`` function returns the same sample-level AnnData as
:func:`maestro_sc.tl.aggregate_samples` (one row per sample, pseudobulk means in ``X``) with its
representation in ``obsm[key_added]``, so the evaluation functions treat MAESTRO and the
baselines alike. :func:`add_baselines` writes several of them into an existing sample AnnData.
Cells are read one sample at a time through :class:`~maestro_sc._data.SampleIndex`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._data import SampleIndex
from .._utils import logger, warn_overwrite
from ._aggregate import sample_table
from ._prepare import celltype_proportions

#: Quantiles of :func:`baseline_quantiles` (beside the mean).
DEFAULT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)

#: Methods of :func:`add_baselines` when none are named (``gated`` joins with a cell-type key).
DEFAULT_METHODS = (
    "means",
    "quantiles",
    "kmeans32",
    "kmeans128",
    "kmeans_clr32",
    "kmeans_clr128",
    "flowsom",
)

_FLOWSOM_HINT = (
    "The FlowSOM baseline needs the `flowsom` package: pip install flowsom "
    "(or pip install 'maestro_sc[test]')."
)


# ---------------------------------------------------------------------------------------------
# representations computed from a sample index: (samples × features array, feature names)
# ---------------------------------------------------------------------------------------------


def pooled_subsample(
    index: SampleIndex, n_cells: int, random_state: int | np.random.Generator | None = 0
) -> np.ndarray:
    """``n_cells`` cells drawn uniformly from all cells of all samples (all cells if fewer)."""
    rng = np.random.default_rng(random_state)
    total = int(index.counts.sum())
    if n_cells >= total:
        return np.concatenate([cells for _, cells in index.iter_samples()])
    per_sample = rng.multivariate_hypergeometric(index.counts, int(n_cells))
    parts = [index.read(i, n=int(k), random_state=rng) for i, k in enumerate(per_sample) if k > 0]
    return np.concatenate(parts)


def _means(index: SampleIndex) -> tuple[np.ndarray, list[str]]:
    return index.sample_means(), [f"{m}_mean" for m in index.markers]


def _quantiles(index: SampleIndex, quantiles: Sequence[float]) -> tuple[np.ndarray, list[str]]:
    q = np.asarray(quantiles, dtype=np.float64)
    if q.ndim != 1 or len(q) == 0 or (q < 0).any() or (q > 1).any():
        raise ValueError(f"`quantiles` must be values in [0, 1], got {quantiles!r}.")
    d = index.n_markers
    out = np.zeros((index.n_samples, d * (len(q) + 1)))
    for i, cells in index.iter_samples():
        out[i, :d] = cells.mean(axis=0, dtype=np.float64)
        out[i, d:] = np.quantile(cells, q, axis=0).ravel()
    names = [f"{m}_mean" for m in index.markers]
    names += [f"{m}_q{round(100 * v):02d}" for v in q for m in index.markers]
    return out, names


def _proportions(index: SampleIndex, assign, n_clusters: int) -> np.ndarray:
    """Per-sample fraction of cells that ``assign`` puts in each of ``n_clusters`` clusters."""
    out = np.zeros((index.n_samples, n_clusters))
    for i, cells in index.iter_samples():
        labels = np.asarray(assign(cells), dtype=np.int64)
        out[i] = np.bincount(labels, minlength=n_clusters)[:n_clusters] / max(1, len(labels))
    return out


def _check_fit_cells(n_fit_cells: int, n_clusters: int) -> None:
    if not isinstance(n_clusters, (int, np.integer)) or n_clusters < 2:
        raise ValueError(f"`n_clusters` must be an integer >= 2, got {n_clusters!r}.")
    if not isinstance(n_fit_cells, (int, np.integer)) or n_fit_cells < n_clusters:
        raise ValueError(
            f"`n_fit_cells` ({n_fit_cells!r}) must be an integer at least `n_clusters` "
            f"({n_clusters})."
        )


def _kmeans(
    index: SampleIndex,
    n_clusters: int,
    n_fit_cells: int,
    random_state: int,
    batch_size: int,
    log_ratio: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Cluster proportions; with ``log_ratio`` the clusters are fitted on standardised markers
    and each sample is its centred log-ratio composition (pseudocount ``1 / (4 k)``)."""
    from sklearn.cluster import MiniBatchKMeans

    _check_fit_cells(n_fit_cells, n_clusters)
    fit_cells = pooled_subsample(index, n_fit_cells, random_state)
    if len(fit_cells) < n_clusters:
        raise ValueError(
            f"The data hold {len(fit_cells)} cells, fewer than n_clusters={n_clusters}."
        )
    mean, std = np.zeros(fit_cells.shape[1]), np.ones(fit_cells.shape[1])
    if log_ratio:
        mean, std = fit_cells.mean(axis=0), fit_cells.std(axis=0)
        std = np.where(std > 1e-8, std, 1.0)
    model = MiniBatchKMeans(
        n_clusters=n_clusters,
        batch_size=min(batch_size, len(fit_cells)),
        n_init=3,
        random_state=random_state,
    )
    model.fit((fit_cells - mean) / std)
    rep = _proportions(index, lambda x: model.predict((x - mean) / std), n_clusters)
    if not log_ratio:
        return rep, [f"kmeans_{k}" for k in range(n_clusters)]
    log_p = np.log(rep + 1.0 / (4 * n_clusters))
    rep = log_p - log_p.mean(axis=1, keepdims=True)
    return rep, [f"kmeans_clr_{k}" for k in range(n_clusters)]


def _flowsom(
    index: SampleIndex,
    n_clusters: int,
    xdim: int,
    ydim: int,
    rlen: int,
    n_fit_cells: int,
    random_state: int,
    level: str,
) -> tuple[np.ndarray, list[str]]:
    try:
        import flowsom
    except ImportError as err:
        raise ImportError(_FLOWSOM_HINT) from err
    if level not in ("metacluster", "cluster"):
        raise ValueError(f"`level` must be 'metacluster' or 'cluster', got {level!r}.")
    if xdim * ydim < n_clusters:
        raise ValueError(
            f"The {xdim}×{ydim} SOM has fewer nodes than n_clusters={n_clusters} metaclusters; "
            "raise xdim/ydim or lower n_clusters."
        )
    _check_fit_cells(n_fit_cells, n_clusters)
    fit_cells = pooled_subsample(index, n_fit_cells, random_state).astype(np.float64)
    # flowsom seeds numpy's global generator; keep the caller's global state untouched.
    state = np.random.get_state()  # noqa: NPY002
    try:
        model = flowsom.models.FlowSOMEstimator(
            xdim=xdim, ydim=ydim, rlen=rlen, n_clusters=n_clusters, seed=random_state
        )
        model.fit(fit_cells)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    if level == "metacluster":
        k = n_clusters
        rep = _proportions(index, lambda x: model.predict(x.astype(np.float64)), k)
        names = [f"flowsom_meta_{j}" for j in range(k)]
    else:
        k = xdim * ydim
        rep = _proportions(index, lambda x: model.cluster_model.predict(x.astype(np.float64)), k)
        names = [f"flowsom_node_{j}" for j in range(k)]
    return rep, names


def _gated(index: SampleIndex, props: Any) -> tuple[np.ndarray, list[str]]:
    props = props.reindex(index.sample_ids).fillna(0.0)
    return props.to_numpy(dtype=np.float64), [f"gated_{c}" for c in props.columns]


# ---------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------


def _store(sdata: Any, key: str, rep: np.ndarray, features: list[str], info: dict) -> None:
    warn_overwrite(sdata.obsm, key, "sdata.obsm")
    sdata.obsm[key] = np.asarray(rep, dtype=np.float32)
    baselines = dict(sdata.uns.get("baselines", {}))
    baselines[key] = {**info, "features": np.asarray(features, dtype=object)}
    sdata.uns["baselines"] = baselines


def _table(index: SampleIndex, mod: str | None) -> Any:
    sdata = sample_table(index)
    if mod is not None:
        sdata.uns["maestro"]["mod"] = mod
    return sdata


def _run(method: str, index: SampleIndex, props: Any = None, **kwargs) -> tuple:
    """Compute one baseline: ``(rep, features, info)``; ``info`` records parameters and time.

    ``props`` is the samples × cell types table of the ``"gated"`` baseline.
    """
    start = time.perf_counter()
    if method == "means":
        rep, features = _means(index)
    elif method == "quantiles":
        rep, features = _quantiles(index, kwargs.get("quantiles", DEFAULT_QUANTILES))
    elif method in ("kmeans", "kmeans_clr"):
        rep, features = _kmeans(
            index,
            kwargs.get("n_clusters", 32),
            kwargs.get("n_fit_cells", 100_000),
            kwargs.get("random_state", 0),
            kwargs.get("batch_size", 4096),
            log_ratio=method == "kmeans_clr",
        )
    elif method == "flowsom":
        rep, features = _flowsom(
            index,
            kwargs.get("n_clusters", 20),
            kwargs.get("xdim", 10),
            kwargs.get("ydim", 10),
            kwargs.get("rlen", 10),
            kwargs.get("n_fit_cells", 100_000),
            kwargs.get("random_state", 0),
            kwargs.get("level", "metacluster"),
        )
    elif method == "gated":
        rep, features = _gated(index, props)
    else:
        raise ValueError(
            f"Unknown baseline {method!r}; use 'means', 'quantiles', 'kmeans', 'kmeans<k>', "
            "'kmeans_clr<k>', 'flowsom' or 'gated'."
        )
    seconds = time.perf_counter() - start
    logger.info("Baseline %s: %d features in %.1f s.", method, rep.shape[1], seconds)
    info = {"method": method, "seconds": float(seconds)}
    info.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()})
    return rep, features, info


def _one_baseline(
    method: str, adata: Any, sample_key: str, key_added: str, markers, layer, mod, **kwargs
) -> Any:
    """Index the cells, build one baseline and return it in a new sample table."""
    index = SampleIndex(adata, sample_key, markers=markers, layer=layer, mod=mod)
    if "n_fit_cells" in kwargs:
        _check_fit_cells(kwargs["n_fit_cells"], kwargs["n_clusters"])
    sdata = _table(index, mod)
    rep, features, info = _run(method, index, **kwargs)
    _store(sdata, key_added, rep, features, info)
    return sdata


def baseline_means(
    adata: Any,
    sample_key: str,
    *,
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    key_added: str = "X_means",
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
        Key of ``obsm`` for the representation.

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
    return _one_baseline("means", adata, sample_key, key_added, markers, layer, mod)


def baseline_quantiles(
    adata: Any,
    sample_key: str,
    *,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    key_added: str = "X_quantiles",
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
        Key of ``obsm`` for the representation.

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
    return _one_baseline(
        "quantiles", adata, sample_key, key_added, markers, layer, mod, quantiles=tuple(quantiles)
    )


def baseline_kmeans(
    adata: Any,
    sample_key: str,
    n_clusters: int = 32,
    *,
    n_fit_cells: int = 100_000,
    batch_size: int = 4096,
    random_state: int = 0,
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
    method = "kmeans_clr" if log_ratio else "kmeans"
    key_added = key_added or f"X_{method}{n_clusters}"
    return _one_baseline(
        method,
        adata,
        sample_key,
        key_added,
        markers,
        layer,
        mod,
        n_clusters=n_clusters,
        n_fit_cells=n_fit_cells,
        batch_size=batch_size,
        random_state=random_state,
    )


def baseline_flowsom(
    adata: Any,
    sample_key: str,
    n_clusters: int = 20,
    *,
    xdim: int = 10,
    ydim: int = 10,
    rlen: int = 10,
    level: str = "metacluster",
    n_fit_cells: int = 100_000,
    random_state: int = 0,
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    key_added: str = "X_flowsom",
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
        Key of ``obsm`` for the representation.

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
    try:
        import flowsom  # noqa: F401
    except ImportError as err:
        raise ImportError(_FLOWSOM_HINT) from err
    return _one_baseline(
        "flowsom",
        adata,
        sample_key,
        key_added,
        markers,
        layer,
        mod,
        n_clusters=n_clusters,
        xdim=xdim,
        ydim=ydim,
        rlen=rlen,
        level=level,
        n_fit_cells=n_fit_cells,
        random_state=random_state,
    )


def baseline_gated(
    adata: Any,
    sample_key: str,
    cell_type_key: str,
    *,
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    key_added: str = "X_gated",
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
        Key of ``obsm`` for the representation.

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
    index = SampleIndex(adata, sample_key, markers=markers, layer=layer, mod=mod)
    props = celltype_proportions(adata, sample_key, cell_type_key, mod=mod)
    sdata = _table(index, mod)
    rep, features, info = _run("gated", index, props, cell_type_key=cell_type_key)
    _store(sdata, key_added, rep, features, info)
    return sdata


def _parse_method(name: str) -> tuple[str, dict]:
    """``"kmeans128"`` → ``("kmeans", {"n_clusters": 128})``; other names pass through."""
    if not isinstance(name, str):
        raise TypeError(f"Baseline methods are names (str), got {type(name).__name__}.")
    match = re.fullmatch(r"(kmeans_clr|kmeans|flowsom)(\d+)", name)
    if match:
        return match.group(1), {"n_clusters": int(match.group(2))}
    return name, {}


def _default_key(name: str, method: str, kwargs: dict) -> str:
    if method in ("kmeans", "kmeans_clr"):
        return f"X_{method}{kwargs.get('n_clusters', 32)}"
    return f"X_{name}"


def add_baselines(
    sdata: Any,
    adata: Any,
    sample_key: str,
    methods: Sequence[str] | None = None,
    *,
    cell_type_key: str | None = None,
    n_fit_cells: int = 100_000,
    random_state: int = 0,
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
        (e.g. ``"kmeans128"``), ``"flowsom"`` and ``"gated"``. Default:
        ``("means", "quantiles", "kmeans32", "kmeans128", "flowsom")``, plus ``"gated"`` when
        ``cell_type_key`` is given.
    cell_type_key
        Column of the cells' ``obs`` with cell types, for ``"gated"``.
    n_fit_cells
        Cells pooled over samples to fit k-means and FlowSOM.
    random_state
        Seed of every random step.
    method_kwargs
        Extra arguments per method name, e.g. ``{"flowsom": {"n_clusters": 20}}``.
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
    plan = []
    for name in methods:
        method, kwargs = _parse_method(name)
        if method not in ("means", "quantiles", "kmeans", "kmeans_clr", "flowsom", "gated"):
            raise ValueError(
                f"Unknown baseline {name!r}; use 'means', 'quantiles', 'kmeans', 'kmeans<k>', "
                "'kmeans_clr<k>', 'flowsom' or 'gated'."
            )
        if method == "gated":
            if cell_type_key is None:
                raise ValueError(
                    "The 'gated' baseline needs `cell_type_key=` (a column of cell types)."
                )
            kwargs["cell_type_key"] = cell_type_key
        if method in ("kmeans", "kmeans_clr", "flowsom"):
            kwargs.setdefault("n_fit_cells", n_fit_cells)
            kwargs.setdefault("random_state", random_state)
        kwargs.update(method_kwargs.get(name, {}))
        key = kwargs.pop("key_added", None) or _default_key(name, method, kwargs)
        plan.append((method, key, kwargs))
    if any(m == "flowsom" for m, _, _ in plan):
        try:
            import flowsom  # noqa: F401
        except ImportError as err:
            raise ImportError(_FLOWSOM_HINT) from err

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
    props = None
    if cell_type_key is not None and any(m == "gated" for m, _, _ in plan):
        props = celltype_proportions(adata, sample_key, cell_type_key, mod=mod)
    for method, key, kwargs in plan:
        rep, features, info = _run(method, index, props, **kwargs)
        _store(sdata, key, rep[rows], features, info)
