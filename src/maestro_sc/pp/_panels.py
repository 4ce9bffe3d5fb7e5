"""Cohorts stained with different panels, and batch effects between them."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._utils import check_var_names, get_matrix, logger, resolve_cells, validate_cells
from ._common import dense_float, set_matrix, writable


def harmonize_panels(
    adatas: Sequence[Any] | Mapping[str, Any],
    how: str = "intersection",
    batch_key: str = "batch",
    *,
    mod: str | None = None,
) -> Any:
    """Concatenate cohorts stained with overlapping panels, keeping the shared markers.

    Markers are matched by name (``var_names``) and kept in the first cohort's order; the
    markers each cohort loses are logged and reported in a warning. ``obs`` columns are kept
    (missing ones filled with NaN), ``var`` columns kept where all cohorts agree.

    Parameters
    ----------
    adatas
        AnnData (or MuData with ``mod=``) cohorts: a list (batches named ``"0"``, ``"1"``, …)
        or a dict ``{batch name: cohort}``.
    how
        ``"intersection"``: keep the markers every cohort has (the only option: a marker
        missing from one cohort has no values there).
    batch_key
        New ``obs`` column naming each cell's cohort (overwritten, with a warning, if present).
    mod
        Modality of each MuData holding the markers.

    Returns
    -------
    A new AnnData of all cells × the shared markers; ``uns["harmonize_panels"]`` lists the
    shared markers and the dropped markers of each cohort.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> a = mst.datasets.synthetic_cohort(n_samples=4, n_markers=24, random_state=0)
    >>> b = mst.datasets.synthetic_cohort(n_samples=4, n_markers=30, random_state=1)
    >>> both = mst.pp.harmonize_panels({"cohort_a": a, "cohort_b": b}, batch_key="cohort")
    >>> both.n_vars
    24
    """
    import anndata as ad

    if how != "intersection":
        raise ValueError(f"how={how!r} is not supported; use how='intersection'.")
    if isinstance(adatas, Mapping):
        names, items = [str(k) for k in adatas], list(adatas.values())
    elif isinstance(adatas, Sequence) and not isinstance(adatas, str):
        names, items = [str(i) for i in range(len(adatas))], list(adatas)
    else:
        raise TypeError(
            f"`adatas` must be a list or a dict of AnnData, got {type(adatas).__name__}."
        )
    if len(items) < 1:
        raise ValueError("`adatas` is empty; pass at least one cohort.")
    cohorts = []
    for name, item in zip(names, items):
        adata, _ = resolve_cells(item, mod)
        try:
            check_var_names(adata)
        except ValueError as err:
            raise ValueError(f"Cohort {name!r}: {err}") from None
        cohorts.append(adata)

    panels = [[str(m) for m in a.var_names] for a in cohorts]
    common = set.intersection(*(set(p) for p in panels))
    shared = [m for m in panels[0] if m in common]
    if not shared:
        listing = "; ".join(f"{n}: {p}" for n, p in zip(names, panels))
        raise ValueError(
            f"The cohorts share no marker name, so nothing can be kept. Panels: {listing}. "
            "Rename the markers to a common nomenclature (e.g. var_names = var['marker'])."
        )
    dropped = {n: [m for m in p if m not in common] for n, p in zip(names, panels)}
    if any(dropped.values()):
        lost = "; ".join(f"{n}: {d}" for n, d in dropped.items() if d)
        logger.warning("harmonize_panels: keeping %d shared markers; dropped %s", len(shared), lost)
        warnings.warn(
            f"harmonize_panels dropped markers not shared by every cohort: {lost}.",
            UserWarning,
            stacklevel=2,
        )
    if any(batch_key in a.obs.columns for a in cohorts):
        warnings.warn(
            f"obs[{batch_key!r}] already exists and is overwritten.", UserWarning, stacklevel=2
        )

    parts = []
    for a in cohorts:
        part = a[:, shared]
        part = part.to_memory() if part.isbacked else part.copy()
        if batch_key in part.obs.columns:
            del part.obs[batch_key]
        parts.append(part)
    all_names = pd.Index(np.concatenate([p.obs_names.to_numpy() for p in parts]))
    out = ad.concat(
        parts,
        join="inner",
        merge="same",
        label=batch_key,
        keys=names,
        index_unique="-" if all_names.has_duplicates else None,
    )
    out.obs[batch_key] = pd.Categorical(out.obs[batch_key].astype(str), categories=names)
    out.uns["harmonize_panels"] = {"markers": shared, "dropped": dropped, "batches": names}
    return out


def normalize_batches(
    adata: Any,
    batch_key: str,
    *,
    method: str = "center",
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    copy: bool = False,
    mod: str | None = None,
) -> Any | None:
    """Remove per-batch shifts (and scales) of each marker, an option against batch effects.

    For each marker and batch ``b`` with cell mean ``m_b`` and sd ``s_b`` (over all the batch's
    cells), and ``m``, ``s`` the same over all cells:

    - ``"center"``: ``x - m_b + m`` (the batch means become the overall mean);
    - ``"standardize"``: ``(x - m_b) / s_b · s + m`` (means and spreads aligned).

    Values stay on the input's scale. Apply after the arcsinh transform. This assumes batches
    differ only technically: where a batch holds more of one condition, its real differences
    are removed too. Sparse data become dense.

    Parameters
    ----------
    adata
        AnnData of cells, or a MuData with ``mod=``.
    batch_key
        Column of ``obs`` naming each cell's batch.
    method
        ``"center"`` or ``"standardize"``.
    markers
        Markers to correct (default: all).
    layer
        Correct ``adata.layers[layer]`` instead of ``X``.
    copy
        Return a corrected copy instead of correcting in place.
    mod
        Modality of a MuData holding the markers.

    Returns
    -------
    The corrected copy if ``copy=True``, else ``None``. ``uns["normalize_batches"]`` holds the
    batches and their per-marker means (and sds).

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=8, random_state=0)
    >>> mst.pp.normalize_batches(adata, "batch", method="center")
    """
    if method not in ("center", "standardize"):
        raise ValueError(f"method={method!r} is unknown; use 'center' or 'standardize'.")
    target, labels, cols = validate_cells(adata, batch_key, markers=markers, layer=layer, mod=mod)
    codes, batches = pd.factorize(labels.to_numpy(), sort=False)

    out, target, _ = writable(adata, mod, copy)
    mat = dense_float(get_matrix(target, layer))
    values = mat[:, cols].astype(np.float64)
    overall_mean, overall_sd = values.mean(axis=0), values.std(axis=0)
    means = np.zeros((len(batches), len(cols)))
    sds = np.ones((len(batches), len(cols)))
    for b in range(len(batches)):
        rows = codes == b
        means[b] = values[rows].mean(axis=0)
        sds[b] = values[rows].std(axis=0)
        if method == "center":
            values[rows] += overall_mean - means[b]
        else:
            safe = np.where(sds[b] > 0, sds[b], 1.0)
            values[rows] = (values[rows] - means[b]) / safe * np.where(
                sds[b] > 0, overall_sd, 1.0
            ) + overall_mean
    mat[:, cols] = values.astype(mat.dtype)
    set_matrix(target, layer, mat)
    target.uns["normalize_batches"] = {
        "batch_key": batch_key,
        "method": method,
        "batches": [str(b) for b in batches],
        "markers": [str(m) for m in target.var_names[cols]],
        "means": means,
        "sds": sds,
    }
    logger.info(
        "normalize_batches: %s over %d batches, %d markers", method, len(batches), len(cols)
    )
    return out
