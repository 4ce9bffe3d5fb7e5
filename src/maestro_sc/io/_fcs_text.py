"""From an FCS file's TEXT keywords to AnnData annotations.

Channel names and stains (``$PnN``, ``$PnS``, ``$PnR``, ``$PnE``), a channel → marker panel,
the ``var`` table (marker names, a guess of each channel's type), the acquisition keywords and
the spillover matrix.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._spill import parse_spill
from .._utils import logger

_CHANNEL_KEY = re.compile(r"^p(\d+)([a-z]+)$")
_OFFSET_KEYS = frozenset(
    {"begindata", "enddata", "beginanalysis", "endanalysis", "beginstext", "endstext", "nextdata"}
)
_SPILL_KEYS = ("spillover", "spill")
_SCATTER = re.compile(r"^(fsc|ssc|fs|ss)(?:$|[-_ .]|[ahw]$|\d)")
_TIME = re.compile(r"(?:^|[^a-z])time(?:$|[^a-z])|^hdr-t$")
_NON_MARKER = re.compile(
    r"^(event_?length|cell_?length|center|offset|width|residual|beaddist|event ?count|"
    r"pulse ?width|doublet)$"
)
_PANEL_CHANNEL_COLS = ("channel", "channels", "pnn", "fcs_colname", "detector", "fcs_channel")
_PANEL_MARKER_COLS = ("marker", "markers", "antigen", "pns", "desc", "description", "marker_name")

# --------------------------------------------------------------------------------------------
# Channels, markers, panel, keywords, spillover
# --------------------------------------------------------------------------------------------


def _channel_keyword(text: Mapping[str, Any], n: int, kind: str) -> str | None:
    key = f"p{n}{kind}"
    if key in text:
        return str(text[key])
    # An empty value written as a doubled delimiter (FCS 2.0, CellQuest) reads as an escaped
    # delimiter, so the parser glues the following keywords into one key ending with this one.
    for k, v in text.items():
        if isinstance(k, str) and k.endswith(key) and not k[-len(key) - 1].isalnum():
            return str(v)
    return None


def _channels(text: Mapping[str, Any], n_par: int) -> pd.DataFrame:
    rows = []
    for n in range(1, n_par + 1):
        pnn = _channel_keyword(text, n, "n")
        if pnn is None or not pnn.strip():
            logger.warning("Keyword $P%dN is missing; channel %d is named 'P%d'.", n, n, n)
            pnn = f"P{n}"
        pnn = pnn.strip()
        pns = (_channel_keyword(text, n, "s") or "").strip()
        rows.append(
            {
                "channel": pnn,
                "pns": pns,
                "PnR": (_channel_keyword(text, n, "r") or "").strip(),
                "PnE": (_channel_keyword(text, n, "e") or "").strip(),
            }
        )
    return pd.DataFrame(rows)


def _panel_mapping(panel: Any) -> dict[str, str]:
    """``{channel: marker}`` from a CSV path, DataFrame, Series or dict ("" = no marker)."""
    if panel is None:
        return {}
    if isinstance(panel, str | Path):
        path = Path(panel)
        if not path.is_file():
            raise FileNotFoundError(f"Panel file {str(path)!r} does not exist.")
        panel = pd.read_csv(path)
    if isinstance(panel, pd.Series):
        pairs = list(panel.items())
    elif isinstance(panel, Mapping):
        pairs = list(panel.items())
    elif isinstance(panel, pd.DataFrame):
        lower = {str(c).strip().lower().lstrip("$"): c for c in panel.columns}
        ch = next((lower[c] for c in _PANEL_CHANNEL_COLS if c in lower), None)
        mk = next((lower[c] for c in _PANEL_MARKER_COLS if c in lower), None)
        if (ch is None or mk is None) and panel.shape[1] == 2:
            ch, mk = panel.columns
        if ch is None or mk is None:
            raise ValueError(
                f"Cannot tell the channel and marker columns of the panel (columns: "
                f"{list(panel.columns)}). Name them 'channel' and 'marker', or pass a dict "
                "{channel: marker}."
            )
        pairs = list(zip(panel[ch], panel[mk], strict=True))
    else:
        raise TypeError(
            f"`panel` must be a CSV path, a DataFrame or a dict {{channel: marker}}, got "
            f"{type(panel).__name__}."
        )
    mapping: dict[str, str] = {}
    for channel, marker in pairs:
        channel = str(channel).strip()
        if channel in mapping:
            raise ValueError(
                f"The panel lists channel {channel!r} twice; keep one row per channel."
            )
        mapping[channel] = "" if _is_missing(marker) else str(marker).strip()
    return mapping


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == "" or value.strip().upper() in ("NA", "NAN")
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _fixed_type(channel: str) -> str | None:
    """``time``/``scatter``/``other`` when the channel name says so, else ``None``."""
    name = channel.lower().strip()
    if _TIME.search(name):
        return "time"
    if _SCATTER.match(name):
        return "scatter"
    if _NON_MARKER.match(name):
        return "other"
    return None


def _var_table(channels: pd.DataFrame, panel: Mapping[str, str], file: str) -> pd.DataFrame:
    markers = []
    for channel, pns in zip(channels["channel"], channels["pns"], strict=True):
        if channel in panel:
            markers.append(panel[channel])
        else:
            # A $PnS that only repeats $PnN names no antigen.
            markers.append(pns if pns and pns != channel else "")
    unknown = [c for c in panel if c not in set(channels["channel"])]
    if unknown:
        warnings.warn(
            f"The panel names channels that {file!r} does not have: {unknown}. They are ignored.",
            UserWarning,
            stacklevel=3,
        )
    fixed = [_fixed_type(c) for c in channels["channel"]]
    # When the file (or panel) names the stained channels, an unnamed one is unstained.
    stained = any(m for m, t in zip(markers, fixed, strict=True) if t is None)
    types = [
        t or ("marker" if m or not stained else "other")
        for m, t in zip(markers, fixed, strict=True)
    ]
    var = pd.DataFrame(
        {
            "channel": channels["channel"].to_numpy(),
            "marker": markers,
            "type": types,
            "PnR": pd.to_numeric(channels["PnR"], errors="coerce").to_numpy(),
            "PnE": channels["PnE"].to_numpy(),
        }
    )
    names = pd.Index([m or c for m, c in zip(markers, var["channel"], strict=True)])
    if names.has_duplicates:
        from anndata.utils import make_index_unique

        dup = names[names.duplicated()].unique().tolist()
        names = make_index_unique(names)
        warnings.warn(
            f"{file!r} has duplicated channel/marker names {dup}; they were made unique by "
            "appending '-1', '-2', ... Pass a `panel` to name them yourself.",
            UserWarning,
            stacklevel=3,
        )
    var.index = names.astype(str)
    return var


def _keywords(text: Mapping[str, Any]) -> dict[str, str]:
    """Acquisition keywords (no per-channel, offset or spillover keys), as HDF5-safe strings."""
    out = {}
    for key, value in text.items():
        key = str(key)
        if _CHANNEL_KEY.match(key) or key in _OFFSET_KEYS or key in _SPILL_KEYS:
            continue
        if not isinstance(value, str | int | float):
            continue
        # "/" would open an HDF5 sub-group when the AnnData is written.
        # NUL bytes cannot be stored in HDF5 strings.
        out[key.replace("/", "_").replace("\x00", "")] = str(value).replace("\x00", "").strip()
    return out


def _spillover(text: Mapping[str, Any], channels: Sequence[str], file: str) -> pd.DataFrame | None:
    """The $SPILL/$SPILLOVER matrix as a DataFrame (rows and columns = channel names)."""
    value = next((text[k] for k in _SPILL_KEYS if str(text.get(k, "")).strip()), None)
    if value is None:
        return None
    frame = _parse_spill(value, file)
    if frame is None:
        return None
    if frame.columns.has_duplicates:
        warnings.warn(
            f"The spillover matrix of {file!r} names a channel twice; it is not stored.",
            UserWarning,
            stacklevel=3,
        )
        return None
    unknown = [c for c in frame.columns if c not in set(channels)]
    if unknown:
        warnings.warn(
            f"The spillover matrix of {file!r} names channels that are not among its $PnN: "
            f"{unknown}. It is stored as written; compensation can only use the channels that "
            "match.",
            UserWarning,
            stacklevel=3,
        )
    return frame


def _spillover_for_uns(frame: pd.DataFrame) -> pd.DataFrame | dict[str, np.ndarray]:
    """The DataFrame itself, or ``{"channels", "matrix"}`` when its names cannot be HDF5 keys.

    anndata writes a DataFrame's column names as HDF5 keys, where "/" is deprecated (a
    FutureWarning in anndata 0.12, an error later); BD filter-named detectors ("BL 530/30-A")
    have it. The dict is the layout of the shared ``.h5ad`` files' ``uns['spillover']``.
    """
    if any("/" in c for c in frame.columns):
        return {
            "channels": np.asarray(frame.columns, dtype=object),
            "matrix": frame.to_numpy(dtype=np.float64),
        }
    return frame


def _parse_spill(value: str, file: str) -> pd.DataFrame | None:
    """The keyword as an n × n DataFrame, or ``None`` with a warning when it is malformed."""
    try:
        return parse_spill(value)
    except ValueError as err:
        warnings.warn(
            f"The spillover keyword of {file!r} is not a complete n x n matrix ({err}); no "
            "spillover is stored.",
            UserWarning,
            stacklevel=4,
        )
        return None
