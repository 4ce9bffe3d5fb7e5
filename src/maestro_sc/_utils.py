"""Input checks shared by every public function.

Each check raises a ``ValueError``/``KeyError``/``TypeError`` that names the problem and the fix,
and runs before anything is computed or modified.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

logger = logging.getLogger("maestro_sc")


def resolve_cells(data: Any, mod: str | None = None) -> tuple[AnnData, Any]:
    """Return ``(adata, mdata)`` for an AnnData or a MuData plus ``mod``.

    ``mdata`` is the MuData (or ``None``); ``adata`` is the modality object itself, so in-place
    functions write into it.
    """
    from anndata import AnnData

    if isinstance(data, AnnData):
        if mod is not None:
            raise TypeError(
                f"`mod={mod!r}` was given but the input is an AnnData; `mod` is only for MuData. "
                "Pass the AnnData without `mod`."
            )
        return data, None
    if type(data).__name__ == "MuData" and hasattr(data, "mod"):
        mods = list(data.mod.keys())
        if mod is None:
            if len(mods) != 1:
                raise ValueError(
                    f"The MuData has {len(mods)} modalities {mods}; pass `mod=` naming the one "
                    "that holds the cytometry markers (e.g. mod='prot')."
                )
            mod = mods[0]
        if mod not in data.mod:
            raise KeyError(f"Modality {mod!r} is not in the MuData. Available modalities: {mods}.")
        adata = data.mod[mod]
        if adata.n_obs == 0:
            raise ValueError(f"Modality {mod!r} of the MuData has zero cells; nothing to use.")
        return adata, data
    raise TypeError(
        f"Expected an AnnData (or a MuData with `mod=`), got {type(data).__name__}. "
        "Build one with anndata.AnnData(X, obs=...) or read it with anndata.read_h5ad."
    )


def sample_labels(adata: AnnData, sample_key: str, mdata: Any = None) -> pd.Series:
    """The per-cell sample labels of ``adata`` (looked up in the modality, then in MuData obs)."""
    if not isinstance(sample_key, str):
        raise TypeError(
            f"`sample_key` must be a column name (str), got {type(sample_key).__name__}."
        )
    if sample_key in adata.obs.columns:
        return adata.obs[sample_key]
    if mdata is not None:
        if sample_key in mdata.obs.columns:
            return _align_to_cells(mdata.obs[sample_key], adata, sample_key)
        # scverse's "mod:column" names a modality's column; mudata >= 0.4 no longer copies
        # those into the global obs on update, so look in the modality itself.
        mod_name, _, column = sample_key.partition(":")
        other = mdata.mod.get(mod_name) if column else None
        if other is not None and column in other.obs.columns:
            return _align_to_cells(other.obs[column], adata, sample_key)
        raise KeyError(
            f"sample_key {sample_key!r} is neither in the modality's obs "
            f"{list(adata.obs.columns)} nor in the MuData's global obs {list(mdata.obs.columns)}. "
            "Pass one of these columns as `sample_key`."
        )
    raise KeyError(
        f"sample_key {sample_key!r} is not a column of adata.obs. Available columns: "
        f"{list(adata.obs.columns)}. Pass one of them as `sample_key`."
    )


def _align_to_cells(col: pd.Series, adata: AnnData, sample_key: str) -> pd.Series:
    """``col`` (indexed by MuData obs names) in the order of the modality's cells."""
    if col.index.has_duplicates:
        raise ValueError(
            f"sample_key {sample_key!r} comes from the MuData's global obs, but obs_names are "
            "duplicated, so cells cannot be matched to it. Make them unique first "
            "(mdata.obs_names_make_unique()) or put the column into the modality's obs."
        )
    return col.reindex(adata.obs_names)


def check_random_state(
    value: Any, name: str = "random_state", *, generator: bool = False, none: bool = False
) -> None:
    """Raise unless ``value`` is a seed in ``[0, 2**32)`` (or a Generator / None where allowed)."""
    if value is None and none:
        return
    if generator and isinstance(value, np.random.Generator):
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        kinds = "an int" + (", a numpy Generator" if generator else "")
        kinds += " or None" if none else ""
        raise TypeError(f"`{name}` must be {kinds}, got {value!r} ({type(value).__name__}).")
    if not 0 <= int(value) < 2**32:
        raise ValueError(f"`{name}`={value} must be a seed in [0, 2**32 - 1], e.g. 0.")


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (Python or numpy; ``bool`` is not one)."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def check_count(value: Any, name: str, *, minimum: int = 1, none: bool = False) -> None:
    """Raise unless ``value`` is an int ``>= minimum`` (or None where allowed)."""
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"`{name}` must be an int >= {minimum}"
            + (" or None" if none else "")
            + f", got {value!r} ({type(value).__name__})."
        )
    if value < minimum:
        raise ValueError(f"`{name}`={value} is too small: pass an int >= {minimum}.")


def check_var_names(adata: AnnData) -> None:
    """Raise on empty data or duplicated marker names."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(
            f"The AnnData is empty ({adata.n_obs} cells × {adata.n_vars} markers); "
            "there is nothing to compute on."
        )
    dup = adata.var_names[adata.var_names.duplicated()].unique().tolist()
    if dup:
        raise ValueError(
            f"var_names are duplicated: {dup}. Make them unique first, e.g. "
            "adata.var_names_make_unique(), or drop the duplicated channels."
        )


def marker_positions(adata: AnnData, markers: Sequence[str] | None) -> np.ndarray:
    """Column positions of ``markers`` in ``adata.var_names`` (all columns when ``None``)."""
    if markers is None:
        return np.arange(adata.n_vars)
    if isinstance(markers, str):
        raise TypeError(f"`markers` must be a list of marker names, not a string ({markers!r}).")
    markers = list(markers)
    if len(markers) == 0:
        raise ValueError("`markers` is empty; pass at least one marker name or None for all.")
    if len(set(markers)) != len(markers):
        dup = sorted({m for m in markers if markers.count(m) > 1})
        raise ValueError(f"`markers` lists some markers twice: {dup}.")
    missing = [m for m in markers if m not in adata.var_names]
    if missing:
        raise KeyError(
            f"Unknown markers {missing}: not in var_names. Available: {list(adata.var_names)}."
        )
    return adata.var_names.get_indexer(markers)


def get_matrix(adata: AnnData, layer: str | None):
    """The raw matrix object (``X`` or a layer); may be dense, sparse or a backed dataset."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"Layer {layer!r} not found. Available layers: {list(adata.layers.keys())}.")
    return adata.layers[layer]


def check_numeric(mat: Any) -> None:
    """Raise a ``TypeError`` for non-numeric matrices."""
    dtype = getattr(mat, "dtype", None)
    if dtype is None:
        raise TypeError(
            f"The cell matrix has no dtype ({type(mat).__name__}); expected a numeric array. "
            "Set adata.X to the cells × markers values, or pass `layer=` naming a layer."
        )
    if np.issubdtype(dtype, np.complexfloating):
        raise TypeError(
            f"The cell matrix has complex dtype {dtype}; marker values must be real. Keep the "
            "real part, e.g. adata.X = adata.X.real.astype('float32')."
        )
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise TypeError(
            f"The cell matrix has dtype {dtype}, which is not numeric. Convert it, e.g. "
            "adata.X = adata.X.astype('float32'), after removing text columns."
        )


def _iter_row_blocks(mat: Any, cols: np.ndarray, block: int = 200_000):
    n = mat.shape[0]
    for start in range(0, n, block):
        chunk = mat[start : min(n, start + block)]
        if hasattr(chunk, "toarray"):
            chunk = chunk.toarray()
        yield np.asarray(chunk)[:, cols]


def check_finite(
    mat: Any, cols: np.ndarray, var_names: Sequence[str], *, float32: bool = False
) -> None:
    """Raise a ``ValueError`` naming how many non-finite values and in which markers.

    With ``float32``, values a float32 cannot hold (they would become inf when read as
    float32, as the sample index does) are an error too.
    """
    if not np.issubdtype(mat.dtype, np.floating):
        return
    limit = float(np.finfo(np.float32).max)
    wide = float32 and np.finfo(mat.dtype).max > limit
    bad = np.zeros(len(cols), dtype=np.int64)
    big = np.zeros(len(cols), dtype=np.int64)
    for chunk in _iter_row_blocks(mat, cols):
        finite = np.isfinite(chunk)
        bad += (~finite).sum(axis=0)
        if wide:
            big += (finite & (np.abs(chunk) > limit)).sum(axis=0)
    if bad.any():
        names = [f"{var_names[c]} ({int(k)})" for c, k in zip(cols, bad) if k]
        raise ValueError(
            f"The data hold {int(bad.sum())} NaN/inf values, in markers: {', '.join(names)}. "
            "Remove or impute these cells first, e.g. "
            "adata = adata[np.isfinite(adata.X).all(axis=1)].copy()."
        )
    if big.any():
        names = [f"{var_names[c]} ({int(k)})" for c, k in zip(cols, big) if k]
        raise ValueError(
            f"The data hold {int(big.sum())} values too large for float32 (|x| > {limit:.3g}), "
            f"in markers: {', '.join(names)}; cells are read as float32. Transform the values "
            "first (mst.pp.arcsinh) or remove these cells."
        )


def validate_cells(
    data: Any,
    sample_key: str | None,
    *,
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    check_values: bool = True,
    float32: bool = False,
) -> tuple[AnnData, pd.Series | None, np.ndarray]:
    """Run every input check for a function that reads cells.

    Returns ``(adata, labels, cols)``: the (modality) AnnData, the per-cell sample labels (or
    ``None`` when ``sample_key`` is ``None``) and the marker column positions. ``float32``: the
    values will be read as float32 (see :func:`check_finite`).
    """
    adata, mdata = resolve_cells(data, mod)
    check_var_names(adata)
    labels = None if sample_key is None else sample_labels(adata, sample_key, mdata)
    if labels is not None and labels.isna().any():
        n = int(labels.isna().sum())
        raise ValueError(
            f"{n} cells have no sample id (NaN in obs[{sample_key!r}]). "
            "Drop them or fill the column before calling this function."
        )
    cols = marker_positions(adata, markers)
    mat = get_matrix(adata, layer)
    check_numeric(mat)
    if check_values:
        check_finite(mat, cols, list(adata.var_names), float32=float32)
    return adata, labels, cols


def warn_overwrite(mapping: Any, key: str, where: str) -> None:
    """Warn (as scanpy does) when ``key`` already exists and will be overwritten."""
    if key in mapping:
        import warnings

        warnings.warn(
            f"{where}[{key!r}] already exists and is overwritten.", UserWarning, stacklevel=3
        )


def centred_log_ratio(p: Any, n_parts: int) -> Any:
    """Centred log-ratio of compositions ``p`` (last axis), pseudocount ``1 / (4 n_parts)``.

    ``log(p + eps) - mean(log(p + eps))`` over the last axis; ``p`` is a NumPy array or a torch
    tensor, and the result is of the same kind. The same transform serves the prototype
    composition of the model, its codebook readout and the log-ratio k-means baseline.

    Examples
    --------
    >>> import numpy as np
    >>> out = centred_log_ratio(np.array([[0.5, 0.5, 0.0, 0.0]]), 4)
    >>> round(float(out.sum()), 6), bool(out[0, 0] > 0 > out[0, 2])
    (0.0, True)
    """
    eps = 1.0 / (4 * n_parts)
    if isinstance(p, np.ndarray):
        log_p = np.log(p + eps)
        return log_p - log_p.mean(axis=-1, keepdims=True)
    log_p = (p + eps).log()
    return log_p - log_p.mean(dim=-1, keepdim=True)


@contextlib.contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Torch's thread count set to ``n`` (``None``: left as it is), and put back afterwards.

    Examples
    --------
    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     inside = torch.get_num_threads()
    >>> inside, torch.get_num_threads() == before
    (1, True)
    """
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: ``mallopt`` parameters of glibc (``malloc.h``).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: Trimming and padding on leaving :func:`retained_heap`: the trim threshold glibc's adaptive
#: rule reaches at most (twice its largest mmap threshold), and glibc's default padding.
_TRIM_AFTER, _TOP_PAD_AFTER = 64 * 1024 * 1024, 128 * 1024
#: How many :func:`retained_heap` contexts are open: only the outermost changes the settings.
_heap_depth = 0


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None.

    Looked up once per process: every training run asks for it.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's soname on every Linux architecture
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def retained_heap() -> Iterator[None]:
    """Freed memory kept in the C heap for reuse while a training run is inside.

    A training step allocates and frees the same large buffers (activations, gradients, the
    Sinkhorn kernel) again and again. By default glibc hands large freed blocks back to the
    system, so the next step touches fresh pages, and each fresh page is a page fault: about
    10,000 per step of the ``cpu`` preset, some 5 % of its time on a 2-core machine. Inside
    this context, on Linux with glibc, blocks up to 32 MiB come from the heap and freed memory
    up to 1 GiB stays there. On leaving it, the retained memory is handed back
    (``malloc_trim``) and the heap is again trimmed once 64 MiB are free at its top, with
    glibc's default padding. glibc's adaptive thresholds cannot be switched back on, so they
    stay where that adaptation takes them at most: blocks from 32 MiB up mapped on their own,
    trimming at twice that. Elsewhere (macOS, Windows, other C libraries) this does nothing.
    Contexts may nest; only the outermost changes and restores the settings.

    Examples
    --------
    >>> import torch
    >>> with retained_heap():
    ...     total = sum(float(torch.ones(1_000_000).sum()) for _ in range(3))
    >>> total
    3000000.0
    """
    global _heap_depth
    libc = _glibc() if _heap_depth == 0 else None
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024 * 1024)
        libc.mallopt(_M_TOP_PAD, 64 * 1024 * 1024)
    _heap_depth += 1
    try:
        yield
    finally:
        _heap_depth -= 1
        if libc is not None:
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_AFTER)
            libc.mallopt(_M_TOP_PAD, _TOP_PAD_AFTER)
            libc.malloc_trim(0)
