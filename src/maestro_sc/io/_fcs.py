"""FCS import: readfcs first, flowio as the fallback for files readfcs refuses.

HEADER and TEXT are parsed by readfcs or flowio, and so is the DATA segment, except for integer
data that they cannot unpack (``$PnB`` other than 8/16/32 bits, or a ``$BYTEORD`` other than
``1,2,3,4``/``4,3,2,1``/``1,2``/``2,1``): such DATA is decoded here (``_decode_int_data``). This
module also picks the reader options that real, noncompliant files need, turns reader exceptions
into one ``ValueError`` naming the file and the problem, and lays the result out as an AnnData
(marker names from ``$PnS`` or a panel, channel names in ``var['channel']``, keywords and the
spillover matrix in ``uns``).
"""

from __future__ import annotations

import math
import re
import traceback
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from .._spill import parse_spill
from .._utils import logger

Reader = Literal["auto", "readfcs", "flowio"]
PathLike = str | Path

_READERS = ("auto", "readfcs", "flowio")
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
# Integer layouts that flowio (and so readfcs) unpacks itself; flowio reads any other
# $BYTEORD string in the machine's native order, and returns no events for other widths.
_FLOWIO_INT_BITS = frozenset({"8", "16", "32"})
_FLOWIO_BYTEORD = frozenset({"1,2,3,4", "1,2", "4,3,2,1", "2,1"})
_MAX_INT_BITS = 64
_INT_DECODER_OPTION = "int_decoder=maestro_sc"
_FIX_BROKEN = "Re-export the file from the acquisition software, or leave it out."
_FIX_READFCS = "Pass reader='auto' to fall back to flowio, which reads many such files."


class _FCSError(Exception):
    """A problem found while reading; ``read_fcs`` turns it into a ``ValueError``."""


# --------------------------------------------------------------------------------------------
# Reading with readfcs / flowio
# --------------------------------------------------------------------------------------------


def _check_fcs_signature(path: Path) -> None:
    with path.open("rb") as fh:
        head = fh.read(6)
    if not head.startswith(b"FCS"):
        raise ValueError(
            f"Cannot read FCS file {path.name!r}: it is not an FCS file (it starts with "
            f"{head!r}, not 'FCS'; path: {path}). Pass only FCS files."
        )


def _read_readfcs(path: Path) -> tuple[np.ndarray, dict, str, list[str]]:
    import readfcs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fcs = readfcs.ReadFCS(path)
        # reindex=False: var_names are built here, and readfcs' reindexing refuses a spillover
        # that names a channel missing from $PnN, which the events do not depend on.
        adata = fcs.to_anndata(reindex=False)
    # readfcs swaps the spillover text for a DataFrame whose "/" became "_"; keep the text so
    # the matrix is named by the real $PnN.
    text = {k: v for k, v in fcs.meta.items() if isinstance(v, str)}
    if fcs.spill_txt:
        text["spill"] = fcs.spill_txt
    if _needs_int_decoder(text):
        # readfcs takes flowio's events, which follow the machine's byte order for a $BYTEORD
        # flowio does not know; the flowio path decodes such DATA here instead.
        raise _FCSError(
            f"readfcs cannot unpack its integer data ({_int_layout_summary(text)}); "
            "it reads only 8, 16 and 32-bit values in little- or big-endian order"
        )
    return np.asarray(adata.X), text, _fcs_version(path), []


def _fcs_version(path: Path) -> str:
    with path.open("rb") as fh:
        return fh.read(6)[3:].decode("ascii", "replace").strip()


def _read_flowio(path: Path) -> tuple[np.ndarray, dict, str, list[str]]:
    import flowio
    from flowio.exceptions import DataOffsetDiscrepancyError, FCSParsingError

    options: dict[str, bool] = {}
    first_error: Exception | None = None
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # nextdata_offset=0 reads the first data set of a multi-data-set file, which
                # FlowData refuses by default (readfcs also returns the first one).
                fd = flowio.FlowData(str(path), nextdata_offset=0, **options)
                if _needs_int_decoder(fd.text):
                    # flowio returns no events for these widths (and native-order ones for an
                    # unknown $BYTEORD): decode the DATA segment here.
                    events = _read_int_data(path, fd, options)
                    decoded_here = True
                elif fd.events is None:
                    raise _FCSError("flowio returned no events for its DATA segment")
                else:
                    # preprocess=False: raw stored values, as readfcs returns them; it also
                    # skips a non-numeric $TIMESTEP, which only matters for rescaling time.
                    events = fd.as_array(preprocess=False)
                    decoded_here = False
            break
        except (DataOffsetDiscrepancyError, FCSParsingError) as exc:
            retry = _retry_option(exc, options)
            if first_error is not None and retry is None:
                raise _FCSError(
                    f"{_describe_failure(path, first_error)}; read again with "
                    f"{_format_options(options)}, it still fails: {_describe_failure(path, exc)}"
                ) from exc
            if retry is None:
                raise
            first_error = first_error or exc
            options[retry] = True
        except Exception as exc:
            if first_error is None:
                raise
            raise _FCSError(
                f"{_describe_failure(path, first_error)}; read again with "
                f"{_format_options(options)}, it still fails ({type(exc).__name__}: {exc})"
            ) from exc
    if options.get("use_header_offsets") and fd.header["data_start"] <= fd.header["text_stop"]:
        raise _FCSError(
            "the HEADER and TEXT segments disagree on where the DATA segment starts, and the "
            "HEADER offsets overlap the TEXT segment, so neither can be trusted"
        )
    used = [f"{k}=True" for k in options] + ([_INT_DECODER_OPTION] if decoded_here else [])
    return events, dict(fd.text), str(fd.version), used


def _retry_option(exc: Exception, options: Mapping[str, bool]) -> str | None:
    """The flowio option that works around ``exc``, or ``None`` when there is none left."""
    name = type(exc).__name__
    if name == "DataOffsetDiscrepancyError" and not options.get("use_header_offsets"):
        # Real files with this discrepancy (e.g. Beckman CyAn) have correct HEADER offsets
        # and shifted TEXT ones; HEADER offsets that do not fit the data fail the checks.
        return "use_header_offsets"
    if "off by 1" in str(exc) and not options.get("ignore_offset_error"):
        # $ENDDATA one byte past the data: common and unambiguous (BD LSRII, MACSQuant).
        return "ignore_offset_error"
    return None


def _format_options(options: Mapping[str, bool]) -> str:
    return ", ".join(f"{k}=True" for k in options)


# --------------------------------------------------------------------------------------------
# Integer DATA that flowio cannot unpack
# --------------------------------------------------------------------------------------------


def _needs_int_decoder(text: Mapping[str, Any]) -> bool:
    """Whether the DATA segment is integer data in a layout flowio does not unpack right."""
    if str(text.get("datatype", "")).strip().upper() != "I":
        return False
    n_par = int(str(text.get("par", "0")).strip() or 0)
    widths = {str(_channel_keyword(text, n, "b")).strip() for n in range(1, n_par + 1)}
    return bool(widths - _FLOWIO_INT_BITS) or str(text.get("byteord", "")) not in _FLOWIO_BYTEORD


def _int_layout_summary(text: Mapping[str, Any]) -> str:
    n_par = int(str(text.get("par", "0")).strip() or 0)
    widths = sorted(
        {str(_channel_keyword(text, n, "b")).strip() for n in range(1, n_par + 1)},
        key=lambda w: (not w.isdigit(), int(w) if w.isdigit() else 0, w),
    )
    return f"$PnB {'/'.join(widths)} bits, $BYTEORD {str(text.get('byteord', '')).strip()!r}"


def _byte_significance(byteord: str, n_bytes: int) -> list[int]:
    """Significance (0 = least) of each stored byte of an ``n_bytes``-byte integer.

    ``$BYTEORD`` lists, for each stored byte, its significance counted from 1: ``1,2,3,4`` is
    little-endian, ``4,3,2,1`` big-endian, ``3,4,1,2`` a mixed order of 4-byte words. A plain
    little/big-endian order applies to values of any width; a mixed one only to values as wide
    as its words.
    """
    if n_bytes == 1:
        return [0]
    try:
        order = [int(part) for part in byteord.split(",")]
    except ValueError:
        order = []
    size = len(order)
    if not order or sorted(order) != list(range(1, size + 1)):
        raise _FCSError(
            f"its $BYTEORD is {byteord!r}, which is not a byte order (a permutation such as "
            "1,2,3,4 or 4,3,2,1), so its multi-byte integers cannot be unpacked"
        )
    if order == sorted(order):
        return list(range(n_bytes))
    if order == sorted(order, reverse=True):
        return list(range(n_bytes - 1, -1, -1))
    if size == n_bytes:
        return [o - 1 for o in order]
    raise _FCSError(
        f"its $BYTEORD {byteord} orders the bytes of {size}-byte words, which does not say "
        f"how to order the {n_bytes} bytes of its {8 * n_bytes}-bit integers"
    )


def _range_mask(pnr: Any, bits: int) -> int | None:
    """Bit mask for a channel of ``bits``-bit integers with range ``$PnR``, or ``None``.

    As the FCS 3.x standard describes (and flowio does for 8/16/32 bits), bits above the range
    are ignored: values are ANDed with ``2**k - 1``, ``2**k`` being ``$PnR`` rounded up to a
    power of two. A range that covers all ``bits`` (or a missing/invalid ``$PnR``) masks
    nothing.
    """
    try:
        value = float(str(pnr).strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 1:
        return None
    top = 1 << (math.ceil(value) - 1).bit_length()
    return top - 1 if top < (1 << bits) else None


def _int_layout(text: Mapping[str, Any]) -> list[tuple[int, list[int], int | None]]:
    """``(n_bytes, byte significances, mask)`` per channel of integer DATA."""
    n_par = int(str(text["par"]).strip())
    if n_par < 1:
        raise _FCSError(f"its $PAR is {n_par}, so the DATA segment holds no channels")
    byteord = str(text.get("byteord", "")).strip().replace(" ", "")
    layout = []
    for n in range(1, n_par + 1):
        raw = _channel_keyword(text, n, "b")
        try:
            bits = int(str(raw).strip())
        except ValueError:
            bits = -1
        if bits <= 0:
            raise _FCSError(
                f"its $P{n}B is {raw!r}, not a number of bits, so its integer values cannot be "
                "unpacked"
            )
        if bits % 8:
            raise _FCSError(
                f"its integer data use $P{n}B={bits} bits per value, which do not fill whole "
                f"bytes (bit-packed data); integers of 8 to {_MAX_INT_BITS} bits in whole bytes "
                "are supported"
            )
        if bits > _MAX_INT_BITS:
            raise _FCSError(
                f"its integer data use $P{n}B={bits} bits per value; integers wider than "
                f"{_MAX_INT_BITS} bits are not supported"
            )
        n_bytes = bits // 8
        mask = _range_mask(_channel_keyword(text, n, "r"), bits)
        layout.append((n_bytes, _byte_significance(byteord, n_bytes), mask))
    return layout


def _decode_int_data(raw: bytes, text: Mapping[str, Any]) -> np.ndarray:
    """Events × channels (float64) from the bytes of an integer DATA segment.

    Any byte-aligned ``$PnB`` up to 64 bits, mixed across channels, in any ``$BYTEORD``;
    values are unsigned and masked to their ``$PnR`` range (:func:`_range_mask`). ``raw`` must
    hold a whole number of events.
    """
    layout = _int_layout(text)
    event_bytes = sum(n_bytes for n_bytes, _, _ in layout)
    if event_bytes == 0 or len(raw) % event_bytes:
        raise _FCSError(
            f"the DATA segment ({len(raw)} bytes) is not a whole number of {event_bytes}-byte "
            "events"
        )
    data = np.frombuffer(raw, dtype=np.uint8).reshape(-1, event_bytes)
    out = np.empty((data.shape[0], len(layout)), dtype=np.float64)
    start = 0
    for j, (n_bytes, significance, mask) in enumerate(layout):
        value = np.zeros(data.shape[0], dtype=np.uint64)
        for pos, sig in enumerate(significance):
            value |= data[:, start + pos].astype(np.uint64) << np.uint64(8 * sig)
        if mask is not None:
            value &= np.uint64(mask)
        out[:, j] = value
        start += n_bytes
    return out


def _read_int_data(path: Path, fd: Any, options: Mapping[str, bool]) -> np.ndarray:
    """Decode the integer DATA segment of ``path`` at the offsets flowio chose (see FlowData)."""
    from flowio.exceptions import FCSParsingError

    text = fd.text
    if str(fd.version).strip() == "2.0" or options.get("use_header_offsets"):
        start, stop = int(fd.header["data_start"]), int(fd.header["data_stop"])
    else:
        start, stop = int(text["begindata"]), int(text["enddata"])
    event_bytes = sum(n_bytes for n_bytes, _, _ in _int_layout(text))
    size = stop - start + 1
    if event_bytes > 1 and size % event_bytes == 1:
        if not options.get("ignore_offset_error"):
            # The wording flowio uses, so that _read_flowio retries with ignore_offset_error.
            raise FCSParsingError(
                f"FCS file {path.name} reports a data offset that is off by 1. Set "
                "`ignore_offset_error=True` to force reading in this file."
            )
        size -= 1
    if start < 0 or size < 0 or size % event_bytes:
        raise _FCSError(
            f"the DATA segment (bytes {start}-{stop}) is not a whole number of {event_bytes}-byte "
            "events"
        )
    with path.open("rb") as fh:
        fh.seek(start)
        raw = fh.read(size)
    if len(raw) != size:
        raise _FCSError(
            f"the DATA segment described by HEADER/TEXT (bytes {start}-{stop}) runs past the end "
            f"of the file ({path.stat().st_size} bytes)"
        )
    return _decode_int_data(raw, text)


def _describe_failure(path: Path, exc: BaseException) -> str:
    """One sentence naming what is wrong with the file, from the reader's exception."""
    size = path.stat().st_size
    msg = (str(exc).strip().splitlines() or [""])[0]
    name = type(exc).__name__
    if isinstance(exc, _FCSError):
        return msg
    if isinstance(exc, EOFError):
        return (
            f"the file ends ({size} bytes) before the TEXT segment that its HEADER announces: "
            "it is cut short (header only or truncated)"
        )
    if isinstance(exc, KeyError):
        key = str(exc.args[0]) if exc.args else "?"
        return (
            f"the required keyword ${key.upper()} is missing from the TEXT segment (the TEXT "
            "segment is damaged or incomplete)"
        )
    if "greater than file size" in msg:
        return (
            f"the DATA segment described by HEADER/TEXT runs past the end of the file ({size} "
            "bytes): the file is truncated, holds only HEADER and TEXT, or its $TOT/$ENDDATA "
            "are wrong"
        )
    if name == "DataOffsetDiscrepancyError":
        return f"the HEADER and TEXT segments disagree on where the DATA segment lies ({msg})"
    if name == "FCSParsingError":
        return f"the DATA segment does not match its offsets ({msg})"
    if isinstance(exc, AssertionError):
        return f"readfcs refused the file ({msg or name})"
    return f"{name}: {msg}"


def _read_events(path: Path, reader: str) -> tuple[np.ndarray, dict, str, str, list[str]]:
    """Decode ``path``; returns ``(events, text, fcs_version, reader_used, reader_options)``."""
    readers = {"auto": ("readfcs", "flowio"), "readfcs": ("readfcs",), "flowio": ("flowio",)}
    functions = {"readfcs": _read_readfcs, "flowio": _read_flowio}
    errors: list[tuple[str, BaseException]] = []
    for name in readers[reader]:
        try:
            events, text, version, options = functions[name](path)
            _check_event_count(events, text)
        except Exception as exc:  # every reader failure is reported below
            # Readers leave their file open when they raise; dropping the frames' locals closes
            # it now instead of at some later garbage collection (a ResourceWarning).
            _release_frames(exc)
            errors.append((name, exc))
            logger.debug("%s could not read %s: %s: %s", name, path.name, type(exc).__name__, exc)
            continue
        nextdata = str(text.get("nextdata", "0")).strip()
        if nextdata.isdigit() and int(nextdata) != 0:
            logger.warning("%s holds several data sets; only the first one is read.", path.name)
        if errors:
            logger.info(
                "Read %s with %s (%s failed: %s: %s)",
                path.name,
                name,
                errors[0][0],
                type(errors[0][1]).__name__,
                str(errors[0][1]).splitlines()[0] if str(errors[0][1]) else "",
            )
        else:
            logger.info("Read %s with %s", path.name, name)
        return events, text, version, name, options
    # The last reader is the most lenient, so its error says most about the file.
    last_exc = errors[-1][1]
    tried = " then ".join(n for n, _ in errors)
    fix = _FIX_READFCS if reader == "readfcs" else _FIX_BROKEN
    raise ValueError(
        f"Cannot read FCS file {path.name!r}: {_describe_failure(path, last_exc)}. "
        f"{fix} (Tried {tried}; path: {path}.)"
    ) from last_exc


def _release_frames(exc: BaseException | None) -> None:
    """Clear the locals of the frames of ``exc`` and the exceptions chained to it."""
    seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            traceback.clear_frames(exc.__traceback__)
            exc = exc.__cause__ or exc.__context__


def _check_event_count(events: np.ndarray, text: Mapping[str, Any]) -> None:
    n_par = int(str(text["par"]).strip())
    n_tot = int(str(text["tot"]).strip())
    if events.ndim != 2 or events.shape[1] != n_par:
        raise _FCSError(f"the DATA segment does not hold {n_par} ($PAR) values per event")
    if events.shape[0] != n_tot:
        raise _FCSError(
            f"the DATA segment holds {events.shape[0]} events but $TOT says {n_tot}, so the "
            "events cannot be decoded unambiguously"
        )


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


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


def read_fcs(
    path: PathLike,
    *,
    sample_key: str = "sample",
    sample_id: str | None = None,
    panel: PathLike | pd.DataFrame | Mapping[str, str] | None = None,
    reader: Reader = "auto",
) -> AnnData:
    """Read one FCS file into an AnnData of cells × channels.

    The file is decoded by `readfcs`; if readfcs refuses it (no ``$PnS`` keywords, an
    ``$ENDDATA`` off by one, HEADER/TEXT offset disagreement, a malformed TEXT segment ...),
    `flowio` reads it with the options such files need (``ignore_offset_error``,
    ``use_header_offsets``, first data set of a multi-data-set file). Integer DATA that neither
    unpacks (``$PnB`` other than 8/16/32 bits, e.g. 24-bit Cytek xP3 files, or a mixed
    ``$BYTEORD`` such as ``3,4,1,2``) is decoded by maestro_sc: any byte-aligned width from 8 to
    64 bits, masked to the ``$PnR`` range. Values are the raw stored values (no gain, log or
    time-step scaling), as readfcs returns them. See ``docs/io.md``.

    Parameters
    ----------
    path
        The ``.fcs`` file.
    sample_key
        ``obs`` column that receives the sample id.
    sample_id
        Sample id of every cell; default: the file stem (``Activation_1`` for
        ``Activation_1.fcs``).
    panel
        Channel → marker mapping that overrides ``$PnS``: a CSV path or DataFrame with
        ``channel``/``marker`` columns (or exactly two columns), or a dict. A channel listed with
        an empty/NA marker gets no marker name; channels not listed keep their ``$PnS``.
    reader
        ``"auto"`` (readfcs, then flowio), ``"readfcs"`` or ``"flowio"``.

    Returns
    -------
    AnnData
        ``X``: float32 events × channels. ``var_names``: the marker name where there is one
        (panel, else ``$PnS`` when it differs from ``$PnN``), else the channel name; duplicates
        get ``-1``, ``-2`` suffixes with a warning. ``var``: ``channel`` (``$PnN``), ``marker``
        (``""`` if none), ``type`` (a guess: ``scatter``, ``time``, ``marker`` or ``other``),
        ``PnR``, ``PnE``. ``obs[sample_key]``: categorical sample id. ``uns['fcs']``: the
        acquisition keywords (keys as flowio gives them: lower case without ``$``, e.g. ``tot``,
        ``date``, ``cyt``, ``btim``) plus ``file``, ``fcs_version``, ``reader`` (``readfcs`` or
        ``flowio``) and ``reader_options`` (flowio's workaround options, and
        ``int_decoder=maestro_sc`` when maestro_sc decoded the integer DATA). ``uns['spillover']`` (only when the file has
        ``$SPILL``/``$SPILLOVER``/``SPILL``): a DataFrame with the channel names (``$PnN``) as
        index and columns; when a channel name holds "/" (which anndata cannot write as a
        DataFrame column) it is ``{"channels": array, "matrix": array}`` instead, the layout of
        the shared ``.h5ad`` files.

    Raises
    ------
    ValueError
        If the file cannot be decoded (not FCS, truncated, header only, damaged TEXT, DATA
        larger than the file, integers that are bit-packed or wider than 64 bits ...); the
        message names the file and the problem, and the reader's exception is chained.
    FileNotFoundError
        If ``path`` does not exist.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.io.read_fcs(
    ...     "Activation_1.fcs", panel="Activation-Experiment-Markers.csv"
    ... )  # doctest: +SKIP
    >>> adata.var[["channel", "marker", "type"]].head(8)  # doctest: +SKIP
    >>> adata.uns["fcs"]["reader"]  # doctest: +SKIP
    'flowio'
    """
    if reader not in _READERS:
        raise ValueError(f"`reader` must be one of {_READERS}, got {reader!r}.")
    if not isinstance(sample_key, str) or not sample_key:
        raise TypeError(f"`sample_key` must be a non-empty string, got {sample_key!r}.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FCS file {str(path)!r} does not exist.")
    adata, spill = _read_one(path, sample_key, sample_id, _panel_mapping(panel), reader)
    if spill is not None:
        adata.uns["spillover"] = _spillover_for_uns(spill)
    return adata


def _read_one(
    path: Path, sample_key: str, sample_id: str | None, mapping: Mapping[str, str], reader: str
) -> tuple[AnnData, pd.DataFrame | None]:
    _check_fcs_signature(path)
    events, text, version, used, options = _read_events(path, reader)

    channels = _channels(text, events.shape[1])
    var = _var_table(channels, mapping, path.name)
    sid = path.stem if sample_id is None else str(sample_id)
    obs = pd.DataFrame(
        {sample_key: pd.Categorical([sid] * events.shape[0], categories=[sid])},
        index=pd.RangeIndex(events.shape[0]).astype(str),
    )
    adata = AnnData(np.ascontiguousarray(events, dtype=np.float32), obs=obs, var=var)
    adata.uns["fcs"] = {
        **_keywords(text),
        "file": path.name,
        "fcs_version": version,
        "reader": used,
        "reader_options": ", ".join(options),
    }
    return adata, _spillover(text, list(var["channel"]), path.name)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _fcs_paths(folder_or_list: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(folder_or_list, str | Path):
        folder = Path(folder_or_list)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{str(folder)!r} is not a folder; pass a folder of .fcs files or a list of files."
            )
        paths = sorted(
            (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".fcs"),
            key=_natural_key,
        )
        if not paths:
            raise ValueError(f"No .fcs files in {str(folder)!r}; pass a list of files instead.")
        return paths
    paths = [Path(p) for p in folder_or_list]
    if not paths:
        raise ValueError("The list of FCS files is empty.")
    return paths


def _metadata_rows(
    metadata: PathLike | pd.DataFrame, metadata_key: str | None, paths: Sequence[Path]
) -> tuple[pd.DataFrame, str | None]:
    """Metadata rows in file order (NaN rows for files it does not list) and its key column."""
    if isinstance(metadata, str | Path):
        if not Path(metadata).is_file():
            raise FileNotFoundError(f"Metadata file {str(metadata)!r} does not exist.")
        metadata = pd.read_csv(metadata)
    if not isinstance(metadata, pd.DataFrame):
        raise TypeError(
            f"`metadata` must be a CSV path or a DataFrame, got {type(metadata).__name__}."
        )
    names = {p.name: i for i, p in enumerate(paths)}
    stems = {p.stem: i for i, p in enumerate(paths)}

    def file_index(value: Any) -> int | None:
        if _is_missing(value):
            return None
        key = Path(str(value).strip()).name
        return names.get(key, stems.get(key))

    if metadata_key is not None:
        if metadata_key not in metadata.columns:
            raise KeyError(
                f"metadata_key {metadata_key!r} is not a metadata column; columns: "
                f"{list(metadata.columns)}."
            )
        keys, key_col = metadata[metadata_key], metadata_key
    else:
        candidates = [(None, metadata.index.to_series())] + [
            (c, metadata[c]) for c in metadata.columns
        ]
        scored = [(sum(file_index(v) is not None for v in s), c, s) for c, s in candidates]
        best = max(scored, key=lambda t: t[0])
        if best[0] == 0:
            raise ValueError(
                f"No metadata column (nor the index) holds the file names or stems, e.g. "
                f"{paths[0].name!r} or {paths[0].stem!r}; columns: {list(metadata.columns)}. Pass "
                "`metadata_key=` naming the column with the file names."
            )
        key_col, keys = best[1], best[2]
    positions = [file_index(v) for v in keys]
    seen: dict[int, int] = {}
    for row, pos in enumerate(positions):
        if pos is None:
            continue
        if pos in seen:
            raise ValueError(
                f"The metadata lists file {paths[pos].name!r} twice (rows {seen[pos]} and {row}); "
                "keep one row per file."
            )
        seen[pos] = row
    missing = [p.name for i, p in enumerate(paths) if i not in seen]
    if missing:
        warnings.warn(
            f"The metadata has no row for {len(missing)} file(s): {missing}; their metadata "
            "columns are NaN.",
            UserWarning,
            stacklevel=3,
        )
    order = [seen.get(i) for i in range(len(paths))]
    table = metadata.reset_index(drop=True).reindex([-1 if o is None else o for o in order])
    table.index = pd.RangeIndex(len(paths))
    return table, key_col


def _harmonise(adatas: Sequence[AnnData], files: Sequence[str], on_missing: str) -> list[str]:
    """Marker names shared by all files, in the first file's order.

    A marker that some files lack raises a ``ValueError`` naming it and the files
    (``on_missing="raise"``), or is reported in a warning (``"drop"``) and left to the inner
    join to drop.
    """
    present = [set(a.var_names) for a in adatas]
    all_names: list[str] = []
    for a in adatas:
        all_names += [n for n in a.var_names if n not in all_names]
    partial = {
        name: [f for f, s in zip(files, present, strict=True) if name not in s]
        for name in all_names
        if not all(name in s for s in present)
    }
    if partial:
        detail = "; ".join(f"{m!r} missing from {fs}" for m, fs in partial.items())
        if on_missing == "raise":
            raise ValueError(
                f"Markers are missing from some files: {detail}. Pass on_missing='drop' to drop "
                "them, or a `panel` that gives these channels the same marker name in every file."
            )
        warnings.warn(
            f"Dropped {len(partial)} marker(s) that not every file has: {detail}.",
            UserWarning,
            stacklevel=3,
        )
    return [n for n in all_names if n not in partial]


def _same_matrix(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return (
        list(a.index) == list(b.index)
        and list(a.columns) == list(b.columns)
        and np.allclose(a.to_numpy(), b.to_numpy(), rtol=0, atol=1e-12)
    )


def read_fcs_folder(
    folder_or_list: PathLike | Sequence[PathLike],
    *,
    metadata: PathLike | pd.DataFrame | None = None,
    metadata_key: str | None = None,
    sample_key: str = "sample",
    panel: PathLike | pd.DataFrame | Mapping[str, str] | None = None,
    on_missing: Literal["raise", "drop"] = "raise",
    reader: Reader = "auto",
    progress: bool = True,
) -> AnnData:
    """Read several FCS files into one AnnData of cells, with sample metadata as obs columns.

    Each file is read with :func:`read_fcs`; its columns are matched across files by marker
    name (``var_names``), so channel orders may differ between files.

    Parameters
    ----------
    folder_or_list
        A folder (every ``*.fcs`` in it, in natural order: ``x_2`` before ``x_10``) or a list of
        files.
    metadata
        Per-file table (CSV path or DataFrame) joined as ``obs`` columns: text columns become
        categorical, numeric ones stay numeric. Rows are matched to files by file name or stem.
    metadata_key
        The metadata column with the file names or stems; default: the index or the column that
        matches most files.
    sample_key
        ``obs`` column with the sample id (the file stem).
    panel
        Channel → marker mapping applied to every file (see :func:`read_fcs`).
    on_missing
        A marker that some files lack: ``"raise"`` a ``ValueError`` naming marker and files, or
        ``"drop"`` it with a warning.
    reader
        ``"auto"``, ``"readfcs"`` or ``"flowio"`` (see :func:`read_fcs`).
    progress
        Show a progress bar over files.

    Returns
    -------
    AnnData
        Cells of all files (``obs_names`` ``"<file position>_<row>"``), ``var`` as in
        :func:`read_fcs` (from the first file), ``obs[sample_key]`` categorical in file order,
        the metadata columns, ``uns['fcs_files']`` (one row per sample: file, reader,
        reader_options, fcs_version, n_events and the acquisition keywords),
        ``uns['spillover_by_sample']`` (``{sample: matrix}`` for files with a spillover) and
        ``uns['spillover']`` when every file carries the same matrix (each matrix laid out as
        in :func:`read_fcs`).

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.io.read_fcs_folder(
    ...     "fcs/activation",
    ...     panel="fcs/activation/Activation-Experiment-Markers.csv",
    ...     metadata="fcs/activation/Activation-Experiment-Details.csv",
    ... )  # doctest: +SKIP
    >>> adata.obs[["sample", "Treatment", "OVA_Conc"]].drop_duplicates()  # doctest: +SKIP
    """
    if on_missing not in ("raise", "drop"):
        raise ValueError(f"`on_missing` must be 'raise' or 'drop', got {on_missing!r}.")
    if reader not in _READERS:
        raise ValueError(f"`reader` must be one of {_READERS}, got {reader!r}.")
    paths = _fcs_paths(folder_or_list)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"These FCS files do not exist: {missing}.")
    stems = pd.Index([p.stem for p in paths])
    if stems.has_duplicates:
        dup = stems[stems.duplicated()].unique().tolist()
        raise ValueError(
            f"Several files share the stem(s) {dup}, which would give one sample id to "
            "different files; rename them or read them separately."
        )
    table, key_col = (
        (None, None) if metadata is None else _metadata_rows(metadata, metadata_key, paths)
    )
    mapping = _panel_mapping(panel)

    from tqdm import tqdm

    adatas, spills = [], {}
    for p in tqdm(paths, desc="Reading FCS files", unit="file", disable=not progress):
        one, spill = _read_one(p, sample_key, None, mapping, reader)
        adatas.append(one)
        if spill is not None:
            spills[p.stem] = spill
    files = [p.name for p in paths]
    keep = _harmonise(adatas, files, on_missing)
    changed = {
        n: sorted({str(a.var.at[n, "channel"]) for a in adatas})
        for n in keep
        if len({a.var.at[n, "channel"] for a in adatas}) > 1
    }
    if changed:
        warnings.warn(
            f"Some markers are read from different channels across files: {changed}; "
            "var['channel'] holds the first file's channel.",
            UserWarning,
            stacklevel=2,
        )
    for i, one in enumerate(adatas):
        one.obs_names = [f"{i}_{r}" for r in range(one.n_obs)]
    # The inner join keeps the markers every file has, in the first file's order.
    adata = ad.concat(adatas, join="inner", merge=None, uns_merge=None)
    adata.var = adatas[0].var.loc[adata.var_names].copy()
    codes = np.repeat(np.arange(len(paths)), [a.n_obs for a in adatas])
    obs = pd.DataFrame(
        {sample_key: pd.Categorical.from_codes(codes, categories=list(stems))},
        index=adata.obs_names,
    )
    if table is not None:
        for col in table.columns:
            if col == sample_key:
                if col != key_col:
                    warnings.warn(
                        f"Metadata column {col!r} is not used: obs[{sample_key!r}] holds the "
                        "sample ids. Rename the column to keep it.",
                        UserWarning,
                        stacklevel=2,
                    )
                continue
            values = table[col].to_numpy()[codes]
            dtype = table[col].dtype
            if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
                cats = list(pd.unique(table[col].dropna()))
                obs[col] = pd.Categorical(values, categories=cats)
            else:
                obs[col] = values

    adata.obs = obs
    per_file = []
    for sid, a in zip(stems, adatas, strict=True):
        info = dict(a.uns["fcs"])
        info["n_events"] = a.n_obs
        per_file.append(pd.Series(info, name=sid))
    fcs_files = pd.DataFrame(per_file)
    front = ["file", "reader", "reader_options", "fcs_version", "n_events"]
    fcs_files = fcs_files[front + [c for c in fcs_files.columns if c not in front]]
    text_cols = [c for c in fcs_files.columns if c != "n_events"]
    fcs_files[text_cols] = fcs_files[text_cols].fillna("").astype(str)
    adata.uns["fcs_files"] = fcs_files

    if spills:
        adata.uns["spillover_by_sample"] = {k: _spillover_for_uns(v) for k, v in spills.items()}
        first = next(iter(spills.values()))
        if len(spills) == len(adatas) and all(_same_matrix(first, s) for s in spills.values()):
            adata.uns["spillover"] = _spillover_for_uns(first)
        else:
            logger.warning(
                "The files do not share one spillover matrix; see uns['spillover_by_sample']."
            )
    readers = fcs_files["reader"].value_counts().to_dict()
    logger.info("Read %d FCS files (%s), %d cells", len(paths), readers, adata.n_obs)
    return adata
