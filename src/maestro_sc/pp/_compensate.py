"""Spillover compensation of flow-cytometry channels (wraps pytometry)."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._spill import parse_spill
from .._utils import check_finite, check_numeric, check_var_names, get_matrix, logger, resolve_cells
from ._common import dense_float, writable

#: Where a spillover matrix is looked for in ``uns`` (and in ``uns["meta"]``, as readfcs and
#: pytometry store the FCS keywords).
SPILLOVER_KEYS: tuple[str, ...] = (
    "spill",
    "spillover",
    "$SPILL",
    "SPILL",
    "$SPILLOVER",
    "SPILLOVER",
    "$COMP",
    "COMP",
)


def as_spillover(spill: Any) -> pd.DataFrame:
    """A spillover matrix as a square DataFrame whose columns (and index) are channel names.

    Accepts a DataFrame (columns = channels), a dict ``{"channels": [...], "matrix": ...}`` or
    an FCS ``$SPILL`` string.
    """
    if isinstance(spill, pd.DataFrame):
        df = spill.astype(np.float64)
        df.index = [str(c) for c in df.columns]
    elif isinstance(spill, Mapping) and "matrix" in spill and "channels" in spill:
        channels = [str(c) for c in np.asarray(spill["channels"]).tolist()]
        df = pd.DataFrame(
            np.asarray(spill["matrix"], dtype=np.float64), index=channels, columns=channels
        )
    elif isinstance(spill, str):
        df = parse_spill(spill)
    else:
        raise TypeError(
            f"Cannot read a spillover matrix from a {type(spill).__name__}; pass a pandas "
            "DataFrame whose columns are the channel names, a dict with 'channels' and 'matrix', "
            "or an FCS $SPILL string."
        )
    if df.shape[0] != df.shape[1]:
        raise ValueError(
            f"The spillover matrix must be square; it is {df.shape[0]} × {df.shape[1]}."
        )
    if not np.isfinite(df.to_numpy()).all():
        raise ValueError("The spillover matrix holds NaN/inf values.")
    if np.linalg.matrix_rank(df.to_numpy()) < df.shape[0]:
        raise ValueError("The spillover matrix is singular and cannot be inverted; check it.")
    return df


def find_spillover(uns: Mapping) -> tuple[pd.DataFrame, str] | None:
    """The spillover matrix stored in ``uns`` (or ``uns["meta"]``), with where it was found."""
    places = [(uns, "uns")]
    if isinstance(uns.get("meta"), Mapping):
        places.append((uns["meta"], "uns['meta']"))
    for mapping, where in places:
        for key in SPILLOVER_KEYS:
            if key in mapping and mapping[key] is not None:
                return as_spillover(mapping[key]), f"{where}[{key!r}]"
    return None


def _match_channels(adata: Any, channels: list[str]) -> np.ndarray:
    """Column of each spillover channel, by ``var_names`` or else by ``var["channel"]``."""
    names = pd.Index(adata.var_names.astype(str))
    by_name = names.get_indexer(channels)
    if (by_name >= 0).all():
        return by_name
    if "channel" in adata.var.columns:
        by_channel = pd.Index(adata.var["channel"].astype(str)).get_indexer(channels)
        if (by_channel >= 0).all():
            return by_channel
        best = by_channel if (by_channel >= 0).sum() > (by_name >= 0).sum() else by_name
    else:
        best = by_name
    missing = [c for c, i in zip(channels, best) if i < 0]
    against = "var_names and var['channel']" if "channel" in adata.var.columns else "var_names"
    raise ValueError(
        f"The spillover channels {missing} are not in the data (matched against {against}). "
        "Compensation needs "
        "every channel of the matrix: compensate before dropping channels, or pass a matrix "
        "restricted to the channels present."
    )


def _pytometry_compensate(values: np.ndarray, spill: pd.DataFrame) -> np.ndarray | None:
    """Compensate ``values`` (columns in ``spill``'s order) with pytometry; None if it fails.

    pytometry 0.1.6 still calls ``np.in1d``, which numpy 2.4 removed; the caller then uses the
    same formula directly. A throw-away AnnData keeps pytometry's side effects (a layer, prints)
    away from the user's object.
    """
    try:
        from anndata import AnnData
        from pytometry.pp import compensate as pm_compensate

        tmp = AnnData(values.copy(), var=pd.DataFrame(index=list(spill.columns)))
        with contextlib.redirect_stdout(io.StringIO()) as said, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm_compensate(tmp, comp_matrix=spill, matrix_type="spillover", inplace=True)
        if said.getvalue().strip():
            logger.info("pytometry: %s", said.getvalue().strip())
        return np.asarray(tmp.X, dtype=np.float64)
    except (ImportError, AttributeError, TypeError) as err:
        logger.debug("pytometry compensation unavailable (%s); using numpy", err)
        return None


def compensate(
    adata: Any,
    spillover: Any = None,
    *,
    copy: bool = False,
    mod: str | None = None,
) -> Any | None:
    """Compensate fluorescence spillover: ``x[:, channels] @ inv(S)``.

    Wraps ``pytometry.pp.compensate`` (falling back to the same formula in numpy when
    pytometry does not run with the installed numpy). Only the channels of the spillover matrix
    change; they are matched by ``var_names``, else by ``var["channel"]`` (the FCS ``$PnN``).
    ``uns["compensation"]`` records the channels; compensating twice warns.

    Parameters
    ----------
    adata
        AnnData of cells (raw, untransformed values), or a MuData with ``mod=``.
    spillover
        Spillover matrix: a DataFrame whose columns are channel names, a dict with
        ``"channels"`` and ``"matrix"``, or an FCS ``$SPILL`` string. Default: looked up in
        ``uns`` and ``uns["meta"]`` under :data:`SPILLOVER_KEYS` (``spill``, ``spillover``,
        ``$SPILL``, …).
    copy
        Return a compensated copy instead of compensating in place.
    mod
        Modality of a MuData holding the channels.

    Returns
    -------
    The compensated copy if ``copy=True``, else ``None``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata as ad
    >>> import maestro_sc as mst
    >>> spill = pd.DataFrame([[1.0, 0.1], [0.0, 1.0]], columns=["FITC-A", "PE-A"])
    >>> adata = ad.AnnData(np.array([[100.0, 10.0]], dtype=np.float32),
    ...                    var=pd.DataFrame(index=["FITC-A", "PE-A"]))
    >>> mst.pp.compensate(adata, spill)
    >>> adata.X.round(3).tolist() == [[100.0, 0.0]]
    True
    """
    target, _ = resolve_cells(adata, mod)
    check_var_names(target)
    if spillover is None:
        found = find_spillover(target.uns)
        if found is None:
            raise ValueError(
                "No spillover matrix: none given and none in uns or uns['meta'] under "
                f"{list(SPILLOVER_KEYS)}. Pass `spillover=` (a DataFrame whose columns are the "
                "channel names), or skip compensation for mass cytometry or compensated data."
            )
        spill, source = found
    else:
        spill, source = as_spillover(spillover), "argument"
    channels = [str(c) for c in spill.columns]
    cols = _match_channels(target, channels)
    mat = get_matrix(target, None)
    check_numeric(mat)
    check_finite(mat, cols, [str(v) for v in target.var_names])
    if "compensation" in target.uns:
        warnings.warn(
            "uns['compensation'] says these data were already compensated; compensating twice "
            "is wrong. Skip this call if they are.",
            UserWarning,
            stacklevel=2,
        )

    out, target, _ = writable(adata, mod, copy)
    if sparse.issparse(target.X):
        logger.info("compensate: sparse X made dense (compensation fills it)")
    mat = dense_float(target.X)
    values = np.asarray(mat[:, cols], dtype=np.float64)
    result = _pytometry_compensate(values, spill)
    if result is None:
        result = np.linalg.solve(spill.to_numpy().T, values.T).T
    mat[:, cols] = result.astype(mat.dtype)
    target.X = mat
    target.uns["compensation"] = {"channels": channels, "source": source}
    logger.info(
        "compensate: %d channels compensated with the spillover matrix from %s",
        len(channels),
        source,
    )
    return out
