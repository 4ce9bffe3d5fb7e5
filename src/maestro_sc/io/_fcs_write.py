"""FCS export: :func:`write_fcs` writes events as an FCS 3.1 file of 32-bit floats (flowio).

Every argument is checked before the file is opened, so bad input never leaves a partial file;
:func:`maestro_sc.io.read_fcs` reads the file back with the same values, channel names
(``$PnN``), marker names (``$PnS``) and spillover matrix (``$SPILLOVER``).
"""

from __future__ import annotations

import math
import re
import warnings
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PathLike = str | Path

#: Keywords that :func:`write_fcs` sets itself (lower case, without ``$``).
_RESERVED = frozenset(
    {
        "beginanalysis",
        "begindata",
        "beginstext",
        "byteord",
        "datatype",
        "endanalysis",
        "enddata",
        "endstext",
        "mode",
        "nextdata",
        "par",
        "tot",
    }
)
_SPILL_KEYWORDS = frozenset({"spillover", "spill", "comp"})
_CHANNEL_KEYWORD = re.compile(r"^p\d+[bengrs]$")
#: ``$PnR`` written for a channel whose values stay below it (flowio's and FlowJo's default).
_DEFAULT_RANGE = 262_144
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def write_fcs(
    path: PathLike,
    data: Any,
    channels: Sequence[str] | None = None,
    *,
    markers: Sequence[str | None] | Mapping[str, str] | None = None,
    spillover: Any = None,
    metadata: Mapping[str, Any] | None = None,
    layer: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write events to an FCS 3.1 file of 32-bit floats.

    The file holds the values as they are given (write raw, untransformed values: FCS files are
    read as raw data), one ``$PnN`` channel name per column, a ``$PnS`` marker name where there
    is one, and the spillover matrix as the standard ``$SPILLOVER`` keyword
    (``n,name_1,...,name_n,s_11,s_12,...,s_nn``, row by row). :func:`read_fcs` reads it back
    unchanged (up to float32 precision). ``$PnR`` is 262144, or the channel's largest value
    rounded up when that is larger. The file is written with `flowio`.

    Parameters
    ----------
    path
        The file to write (``.fcs``); its folder must exist.
    data
        Events × channels: a 2-D numeric array (dense or scipy sparse), or an AnnData, whose
        ``X`` (or ``layers[layer]``) is written. For an AnnData, ``channels`` and ``markers``
        default to ``var["channel"]`` and ``var["marker"]`` when ``var`` has them (as
        :func:`read_fcs` makes it), else to the ``var_names`` and no markers.
    channels
        One channel name (``$PnN``) per column: unique, non-empty, without commas (the
        ``$SPILLOVER`` keyword separates names with commas). Required for an array.
    markers
        Marker (antigen) names (``$PnS``): one per column (``None`` or ``""`` for a channel
        without a marker), or a dict ``{channel: marker}`` naming some channels.
    spillover
        Spillover matrix to store as ``$SPILLOVER``: a DataFrame whose columns (and index) are
        channel names, a dict ``{"channels": [...], "matrix": ...}`` (the layout
        :func:`read_fcs` stores for names with "/"), or an FCS ``$SPILL`` string. Its channels
        must be among ``channels``; it must be square, finite and invertible. An AnnData's
        ``uns["spillover"]`` is not written unless passed here.
    metadata
        Further TEXT keywords, e.g. ``{"$CYT": "CyTOF2", "$DATE": "01-JAN-2024"}``: names with or
        without ``$`` (standard keywords are written with ``$``, others as given, upper case),
        non-empty values (converted with ``str``). Keywords that describe the data layout
        (``$PAR``, ``$TOT``, ``$DATATYPE``, ``$PnN``, ...) are set by this function and cannot be
        given, and the spillover goes in ``spillover=``.
    layer
        With an AnnData: write ``layers[layer]`` instead of ``X``.
    overwrite
        Replace an existing file; by default an existing file raises ``FileExistsError``.

    Returns
    -------
    Path
        The path of the written file.

    Raises
    ------
    TypeError
        If ``data``, ``channels``, ``markers``, ``spillover`` or ``metadata`` has the wrong type.
    ValueError
        If the values are not a finite 2-D numeric matrix within the float32 range, or a name,
        matrix or keyword is malformed (each message names the fix).
    KeyError
        If ``markers`` (dict) or ``spillover`` names a channel that is not among ``channels``,
        or ``layer`` is not a layer of the AnnData.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile, numpy as np, pandas as pd
    >>> import maestro_sc as mst
    >>> x = np.array([[100.0, 20.0], [5.0, 300.0]], dtype=np.float32)
    >>> spill = pd.DataFrame([[1.0, 0.02], [0.01, 1.0]],
    ...                      index=["FL1-A", "FL2-A"], columns=["FL1-A", "FL2-A"])
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = mst.io.write_fcs(f"{folder}/tube1.fcs", x, ["FL1-A", "FL2-A"],
    ...                             markers=["CD3", "CD19"], spillover=spill)
    ...     adata = mst.io.read_fcs(path)
    >>> adata.var_names.tolist(), adata.var["channel"].tolist()
    (['CD3', 'CD19'], ['FL1-A', 'FL2-A'])
    >>> bool(np.array_equal(adata.X, x)), float(adata.uns["spillover"].loc["FL1-A", "FL2-A"])
    (True, 0.02)
    """
    path = _check_path(path, overwrite)
    values, channels, markers = _resolve_data(data, channels, markers, layer)
    names = _check_channels(channels, values.shape[1])
    stains = _check_markers(markers, names)
    keywords = _check_metadata(metadata)
    if spillover is not None:
        keywords["spillover"] = _spill_keyword(spillover, names)
    for n, column in enumerate(values.T, start=1):
        top = float(np.max(column)) if column.size else 0.0
        keywords[f"p{n}r"] = str(max(_DEFAULT_RANGE, math.ceil(top)))

    import flowio

    events = array("f")
    # Little-endian bytes, as the file's $BYTEORD (1,2,3,4) says, on any machine.
    events.frombytes(np.ascontiguousarray(values, dtype="<f4").tobytes())
    with path.open("wb") as fh:
        flowio.create_fcs(fh, events, names, opt_channel_names=stains, metadata_dict=keywords)
    return path


# --------------------------------------------------------------------------------------------
# Checks (all before the file is opened)
# --------------------------------------------------------------------------------------------


def _check_path(path: Any, overwrite: bool) -> Path:
    if not isinstance(path, str | Path):
        raise TypeError(f"`path` must be a str or Path, got {type(path).__name__}.")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; pass the path of the .fcs file to write.")
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"The folder {str(path.parent)!r} does not exist; create it first "
            "(Path(folder).mkdir(parents=True))."
        )
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{str(path)!r} exists; pass overwrite=True to replace it, or choose another path."
        )
    return path


def _resolve_data(
    data: Any, channels: Any, markers: Any, layer: str | None
) -> tuple[np.ndarray, Any, Any]:
    """The values as a float64 matrix, and the channel and marker names to write."""
    from anndata import AnnData

    if isinstance(data, AnnData):
        if layer is not None:
            if layer not in data.layers:
                raise KeyError(
                    f"layer {layer!r} is not in the AnnData; layers: {list(data.layers)}. Pass "
                    "one of them, or layer=None for X."
                )
            mat = data.layers[layer]
        else:
            mat = data.X
        if channels is None:
            channels = (
                data.var["channel"].astype(str).tolist()
                if "channel" in data.var.columns
                else data.var_names.astype(str).tolist()
            )
            if markers is None and "marker" in data.var.columns:
                markers = [None if pd.isna(m) else str(m) for m in data.var["marker"].tolist()]
        transformed = data.uns.get("arcsinh")
        if isinstance(transformed, Mapping) and (layer or "") == str(transformed.get("layer", "")):
            warnings.warn(
                "uns['arcsinh'] says these values are arcsinh-transformed; FCS files are read "
                "as raw values, so a reader would transform them again. Write the raw values "
                "(e.g. 5 * np.sinh(x) for cofactor 5) unless that is what you want.",
                UserWarning,
                stacklevel=3,
            )
    else:
        if layer is not None:
            raise TypeError("`layer` is only for an AnnData; pass the array itself instead.")
        mat = data
    if mat is None:
        raise ValueError("The AnnData has no X; pass layer= naming the values to write.")
    from scipy import sparse

    if sparse.issparse(mat):
        mat = mat.toarray()
    if not isinstance(mat, np.ndarray | list | tuple) and not hasattr(mat, "__array__"):
        raise TypeError(
            f"`data` must be an AnnData or a 2-D array of events × channels, got "
            f"{type(data).__name__}."
        )
    values = np.asarray(mat)
    if values.ndim != 2:
        raise ValueError(
            f"The values must be a 2-D events × channels matrix, got {values.ndim} dimension(s) "
            f"(shape {values.shape}); reshape them, e.g. x.reshape(-1, n_channels)."
        )
    if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
        raise TypeError(
            f"The values must be numbers, got dtype {values.dtype}; convert them with "
            "np.asarray(x, dtype=np.float32)."
        )
    if np.iscomplexobj(values):
        raise TypeError("The values are complex numbers; FCS files hold real numbers.")
    if values.shape[1] == 0:
        raise ValueError("The values have no channels (0 columns); nothing to write.")
    values = values.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        cols = np.flatnonzero(~finite.all(axis=0)).tolist()
        raise ValueError(
            f"The values hold NaN or infinite numbers (column(s) {cols}); drop or replace those "
            "events before writing."
        )
    if values.size and float(np.abs(values).max()) > _FLOAT32_MAX:
        raise ValueError(
            f"Some values exceed the float32 range (±{_FLOAT32_MAX:.3g}) that FCS float data "
            "hold; rescale them."
        )
    return values, channels, markers


def _check_channels(channels: Any, n_columns: int) -> list[str]:
    if channels is None:
        raise TypeError(
            "`channels` is required with an array: pass one channel name ($PnN) per column."
        )
    if isinstance(channels, str) or not isinstance(channels, Sequence | np.ndarray | pd.Index):
        raise TypeError(
            f"`channels` must be a list of channel names, got {type(channels).__name__}."
        )
    names = list(channels)
    if len(names) != n_columns:
        raise ValueError(
            f"{len(names)} channel names for {n_columns} columns; pass one name per column."
        )
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"Channel names must be strings, got {name!r} ({type(name).__name__}); convert "
                "them with str()."
            )
        if not name.strip():
            raise ValueError("A channel name is empty; every channel needs a $PnN name.")
        if name != name.strip():
            raise ValueError(
                f"Channel name {name!r} has leading or trailing spaces, which readers strip; "
                "remove them."
            )
        if "," in name:
            raise ValueError(
                f"Channel name {name!r} holds a comma, which FCS channel names ($PnN) may not "
                "(the $SPILLOVER keyword separates names with commas); rename the channel."
            )
    dup = pd.Index(names)
    if dup.has_duplicates:
        raise ValueError(
            f"Channel names must be unique; {dup[dup.duplicated()].unique().tolist()} appear "
            "more than once."
        )
    return names


def _check_markers(markers: Any, names: list[str]) -> list[str] | None:
    if markers is None:
        return None
    if isinstance(markers, Mapping):
        unknown = [c for c in markers if c not in set(names)]
        if unknown:
            raise KeyError(
                f"`markers` names channels that are not among `channels`: {unknown}; channels: "
                f"{names}."
            )
        values = [markers.get(c) for c in names]
    elif isinstance(markers, str) or not isinstance(markers, Sequence | np.ndarray | pd.Index):
        raise TypeError(
            "`markers` must be a list with one marker name per channel (None or '' for none) or "
            f"a dict {{channel: marker}}, got {type(markers).__name__}."
        )
    else:
        values = list(markers)
        if len(values) != len(names):
            raise ValueError(
                f"{len(values)} marker names for {len(names)} channels; pass one per channel "
                "(None or '' for a channel without a marker), or a dict {channel: marker}."
            )
    out = []
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.append("")
        elif isinstance(value, str):
            out.append(value.strip())
        else:
            raise TypeError(
                f"Marker names must be strings (or None), got {value!r} ({type(value).__name__})."
            )
    return out


def _check_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"`metadata` must be a dict of keyword → value, got {type(metadata).__name__}."
        )
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key.strip("$ "):
            raise TypeError(f"Keyword names must be non-empty strings, got {key!r}.")
        name = key.lstrip("$").strip().lower()
        if "/" in name or any(ord(ch) < 32 for ch in name):
            raise ValueError(
                f"Keyword {key!r} holds '/' or a control character, which FCS keyword names "
                "may not; rename it."
            )
        if name in _RESERVED or _CHANNEL_KEYWORD.match(name):
            raise ValueError(
                f"Keyword {key!r} describes the data layout and is set by write_fcs; leave it "
                "out of `metadata` (channel names go in `channels`, markers in `markers`)."
            )
        if name in _SPILL_KEYWORDS:
            raise ValueError(
                f"Keyword {key!r} is the spillover matrix; pass it as `spillover=` instead."
            )
        if name in out:
            raise ValueError(f"Keyword {key!r} is given twice (names ignore case and '$').")
        if not isinstance(value, str | int | float | np.integer | np.floating) or isinstance(
            value, bool
        ):
            raise TypeError(
                f"The value of keyword {key!r} must be a string or a number, got "
                f"{type(value).__name__}."
            )
        text = str(value).strip()
        if not text:
            raise ValueError(
                f"The value of keyword {key!r} is empty, which FCS does not allow; leave the "
                "keyword out."
            )
        out[name] = text
    return out


def _spill_keyword(spillover: Any, names: list[str]) -> str:
    """The ``$SPILLOVER`` text of a checked spillover matrix."""
    from ..pp._compensate import as_spillover

    if (
        isinstance(spillover, pd.DataFrame)
        and not isinstance(spillover.index, pd.RangeIndex)
        and [str(i) for i in spillover.index] != [str(c) for c in spillover.columns]
    ):
        raise ValueError(
            "The spillover DataFrame's index and columns name different channels; give both "
            "the channel names in the same order (or a default index)."
        )
    frame = as_spillover(spillover)
    spill_names = [str(c) for c in frame.columns]
    unknown = [c for c in spill_names if c not in set(names)]
    if unknown:
        raise KeyError(
            f"The spillover matrix names channels that are not among `channels`: {unknown}; "
            f"channels: {names}. Rename its rows and columns to the $PnN names."
        )
    if len(set(spill_names)) != len(spill_names):
        raise ValueError("The spillover matrix names a channel twice; keep one row per channel.")
    coefficients = frame.to_numpy(dtype=np.float64).ravel()
    fields = [str(len(spill_names)), *spill_names, *(repr(float(v)) for v in coefficients)]
    return ",".join(fields)
