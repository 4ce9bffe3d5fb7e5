"""The in-place / ``copy=True`` convention shared by the ``pp`` functions (scanpy's)."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np
from scipy import sparse

from .._utils import resolve_cells


def writable(data: Any, mod: str | None, copy: bool) -> tuple[Any, Any, Any]:
    """Return ``(result, adata, mdata)``: what to return, the AnnData to modify, its MuData.

    With ``copy=True`` the input is copied (a backed AnnData is loaded into memory) and
    ``result`` is the copy; otherwise ``result`` is ``None`` and the input itself is modified. A
    view is turned into an actual AnnData first, as scanpy does, since writing into a view would
    silently copy it anyway.
    """
    from anndata import AnnData

    if copy:
        with quiet_mudata():
            new = data.to_memory() if isinstance(data, AnnData) and data.isbacked else data.copy()
        adata, mdata = resolve_cells(new, mod)
        return new, adata, mdata
    adata, mdata = resolve_cells(data, mod)
    if adata.isbacked:
        raise ValueError(
            "The AnnData is backed (opened with backed='r'); it cannot be modified in place. "
            "Pass copy=True to get a modified in-memory copy, or load it with adata.to_memory()."
        )
    if adata.is_view:
        warnings.warn(
            "Received a view of an AnnData; making it an actual AnnData to modify it in place.",
            UserWarning,
            stacklevel=3,
        )
        adata._init_as_actual(adata.copy())
    return None, adata, mdata


def subset_inplace(
    adata: Any, mdata: Any, *, obs: np.ndarray | None = None, var: np.ndarray | None = None
) -> None:
    """Keep the rows ``obs`` / columns ``var`` (boolean masks) of ``adata``; sync its MuData."""
    if obs is not None and not obs.all():
        adata._inplace_subset_obs(obs)
    if var is not None and not var.all():
        adata._inplace_subset_var(var)
    sync_mudata(mdata)


@contextlib.contextmanager
def quiet_mudata():
    """Silence mudata 0.3's notice that update()'s defaults will change: not the user's to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pull_on_update.*", category=FutureWarning)
        yield


def sync_mudata(mdata: Any) -> None:
    """Update a MuData's global obs/var after a modality changed shape (no-op for None)."""
    if mdata is not None:
        with quiet_mudata():
            mdata.update()


def float_dtype(dtype: np.dtype) -> np.dtype:
    """Floating dtype to compute in: keep a float input's, float32 for integers and booleans."""
    return np.dtype(dtype) if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)


def dense_float(mat: Any) -> np.ndarray:
    """``mat`` as a writable dense float array: the array itself when it already is one."""
    if sparse.issparse(mat):
        mat = mat.toarray()
    mat = np.asarray(mat)
    dtype = float_dtype(mat.dtype)
    if mat.dtype != dtype or not mat.flags.writeable:
        mat = mat.astype(dtype)
    return mat


def set_matrix(adata: Any, layer: str | None, mat: Any) -> None:
    if layer is None:
        adata.X = mat
    else:
        adata.layers[layer] = mat
