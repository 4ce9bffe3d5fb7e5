"""The registry of baseline methods: how each representation is computed, with its defaults.

Every baseline is one :class:`BaselineMethod` in :data:`BASELINES`: the function that turns a
:class:`~maestro_sc._data.SampleIndex` into a ``(samples, features)`` array and its feature
names, the defaults of its parameters, the check of those parameters (run before any cell is
read) and its default ``obsm`` key. :func:`plan_baseline` resolves a method name such as
``"kmeans128"`` with its parameters, and :func:`run_baseline` computes it; the public functions
in :mod:`maestro_sc.tl._baselines` go through these (and :func:`prepare_baseline`) only.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._data import SampleIndex
from .._utils import centred_log_ratio, check_count, logger
from ._prepare import celltype_proportions

#: Quantiles of :func:`~maestro_sc.tl.baseline_quantiles` (beside the mean).
DEFAULT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


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


def _kmeans(
    index: SampleIndex,
    n_clusters: int,
    n_fit_cells: int,
    random_state: int,
    batch_size: int,
    log_ratio: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Cluster proportions, or with ``log_ratio`` their centred log-ratio.

    With ``log_ratio`` the clusters are fitted on standardised markers and each sample is its
    centred log-ratio composition (pseudocount ``1 / (4 k)``).
    """
    from sklearn.cluster import MiniBatchKMeans

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
    return centred_log_ratio(rep, n_clusters), [f"kmeans_clr_{k}" for k in range(n_clusters)]


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
    import flowsom

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


def _gated_proportions(cells: Cells, cell_type_key: str) -> Any:
    return celltype_proportions(cells.data, cells.sample_key, cell_type_key, mod=cells.mod)


def _gated(index: SampleIndex, cell_type_key: str, prepared: Any) -> tuple[np.ndarray, list[str]]:
    props = prepared.reindex(index.sample_ids).fillna(0.0)
    return props.to_numpy(dtype=np.float64), [f"gated_{c}" for c in props.columns]


# ---------------------------------------------------------------------------------------------
# parameter checks, run before any cell is read
# ---------------------------------------------------------------------------------------------


def _check_quantiles(quantiles: Sequence[float]) -> None:
    q = np.asarray(quantiles, dtype=np.float64)
    if q.ndim != 1 or len(q) == 0 or (q < 0).any() or (q > 1).any():
        raise ValueError(f"`quantiles` must be values in [0, 1], got {quantiles!r}.")


def _check_clusters(n_clusters: int, n_fit_cells: int, **_: Any) -> None:
    check_count(n_clusters, "n_clusters", minimum=2)
    check_count(n_fit_cells, "n_fit_cells", minimum=int(n_clusters))


def _check_flowsom(n_clusters: int, xdim: int, ydim: int, level: str, **params: Any) -> None:
    _check_clusters(n_clusters, **params)
    if level not in ("metacluster", "cluster"):
        raise ValueError(f"`level` must be 'metacluster' or 'cluster', got {level!r}.")
    if xdim * ydim < n_clusters:
        raise ValueError(
            f"The {xdim}×{ydim} SOM has fewer nodes than n_clusters={n_clusters} metaclusters; "
            "raise xdim/ydim or lower n_clusters."
        )


def _check_gated(cell_type_key: str | None) -> None:
    if cell_type_key is None:
        raise ValueError("The 'gated' baseline needs `cell_type_key=` (a column of cell types).")


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cells:
    """The cells a baseline is computed from, for methods that read more than the index."""

    data: Any
    sample_key: str
    mod: str | None = None


@dataclass(frozen=True)
class BaselineMethod:
    """One baseline: its function, parameter defaults, check, key and requirements.

    ``compute(index, **params)`` returns ``(rep, features)``. A method that reads more of the
    cells than the index holds has a ``prepare(cells, **params)`` step (``cells`` a
    :class:`Cells`), run for every planned method before any is computed, whose result
    ``compute`` gets as ``prepared=``. ``numbered`` methods take their cluster count from the name
    (``"kmeans128"``); ``key_with_k`` puts it in the default key (``"X_kmeans128"``).
    ``package`` names an optional dependency the method needs.
    """

    name: str
    compute: Callable[..., tuple[np.ndarray, list[str]]]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[..., None] | None = None
    numbered: bool = False
    key_with_k: bool = False
    prepare: Callable[..., Any] | None = None
    package: str | None = None

    def default_key(self, name: str, params: Mapping[str, Any]) -> str:
        """The ``obsm`` key of the representation unless ``key_added`` names one."""
        if self.key_with_k:
            return f"X_{self.name}{params['n_clusters']}"
        return f"X_{name}"


_FIT = {"n_fit_cells": 100_000, "random_state": 0}
_KMEANS = {"n_clusters": 32, "batch_size": 4096, **_FIT}

#: Every baseline method by name.
BASELINES: dict[str, BaselineMethod] = {
    m.name: m
    for m in (
        BaselineMethod("means", _means),
        BaselineMethod(
            "quantiles", _quantiles, {"quantiles": DEFAULT_QUANTILES}, check=_check_quantiles
        ),
        *(
            BaselineMethod(
                name,
                functools.partial(_kmeans, log_ratio=log_ratio),
                _KMEANS,
                check=_check_clusters,
                numbered=True,
                key_with_k=True,
            )
            for name, log_ratio in (("kmeans", False), ("kmeans_clr", True))
        ),
        BaselineMethod(
            "flowsom",
            _flowsom,
            {"n_clusters": 20, "xdim": 10, "ydim": 10, "rlen": 10, "level": "metacluster", **_FIT},
            check=_check_flowsom,
            numbered=True,
            package="flowsom",
        ),
        BaselineMethod(
            "gated",
            _gated,
            {"cell_type_key": None},
            check=_check_gated,
            prepare=_gated_proportions,
        ),
    )
}

#: Methods of :func:`~maestro_sc.tl.add_baselines` when none are named (``gated`` joins them
#: when a cell-type key is given).
DEFAULT_METHODS = (
    "means",
    "quantiles",
    "kmeans32",
    "kmeans128",
    "kmeans_clr32",
    "kmeans_clr128",
    "flowsom",
)

_NUMBERED = re.compile(
    rf"({'|'.join(sorted((n for n, m in BASELINES.items() if m.numbered), key=len, reverse=True))})"
    r"(\d+)"
)
_PACKAGE_HINT = (
    "The {method} baseline needs the `{package}` package: pip install {package} "
    "(or pip install 'maestro_sc[test]')."
)


@dataclass(frozen=True)
class PlannedBaseline:
    """A checked baseline to compute: its method, full parameters and ``obsm`` key."""

    method: BaselineMethod
    params: dict[str, Any]
    key: str


def find_baseline(name: str) -> tuple[BaselineMethod, dict[str, Any]]:
    """The method that ``name`` names, and the parameters the name sets (``"kmeans128"``)."""
    if not isinstance(name, str):
        raise TypeError(f"Baseline methods are names (str), got {type(name).__name__}.")
    match = _NUMBERED.fullmatch(name)
    if match:
        return BASELINES[match.group(1)], {"n_clusters": int(match.group(2))}
    if name not in BASELINES:
        numbered = [f"'{n}<k>'" for n, m in BASELINES.items() if m.numbered]
        raise ValueError(
            f"Unknown baseline {name!r}; use one of {', '.join(map(repr, BASELINES))} "
            f"or {', '.join(numbered)} (k clusters)."
        )
    return BASELINES[name], {}


def plan_baseline(
    name: str, params: Mapping[str, Any] | None = None, key_added: str | None = None
) -> PlannedBaseline:
    """Resolve ``name`` (e.g. ``"kmeans128"``) and ``params`` over the method's defaults, checked.

    Raises before any cell is read: an unknown name or parameter, a parameter out of range, or
    a missing optional package.
    """
    method, from_name = find_baseline(name)
    params = {**from_name, **(params or {})}
    unknown = sorted(set(params) - set(method.defaults))
    if unknown:
        raise TypeError(
            f"The {method.name!r} baseline has no parameter(s) {unknown}; its parameters are "
            f"{sorted(method.defaults)}."
        )
    params = {**method.defaults, **params}
    if method.check is not None:
        method.check(**params)
    if method.package is not None and importlib.util.find_spec(method.package) is None:
        raise ImportError(_PACKAGE_HINT.format(method=method.name, package=method.package))
    return PlannedBaseline(method, params, key_added or method.default_key(name, params))


def prepare_baseline(planned: PlannedBaseline, cells: Cells) -> Any:
    """Run the method's ``prepare`` step (``None`` for methods that need none)."""
    if planned.method.prepare is None:
        return None
    return planned.method.prepare(cells, **planned.params)


def run_baseline(
    planned: PlannedBaseline, index: SampleIndex, prepared: Any = None
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Compute a planned baseline: ``(rep, features, info)``; ``info`` holds params and time.

    ``prepared`` is what :func:`prepare_baseline` returned for it.
    """
    start = time.perf_counter()
    extra = {} if planned.method.prepare is None else {"prepared": prepared}
    rep, features = planned.method.compute(index, **planned.params, **extra)
    seconds = time.perf_counter() - start
    name = planned.method.name
    logger.info("Baseline %s: %d features in %.1f s.", name, rep.shape[1], seconds)
    info = {"method": name, "seconds": float(seconds)}
    info.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in planned.params.items()})
    return rep, features, info
