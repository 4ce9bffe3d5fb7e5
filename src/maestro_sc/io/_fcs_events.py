"""The events of one FCS file: readfcs first, flowio as the fallback, integer DATA decoded here.

HEADER and TEXT are parsed by readfcs or flowio, and so is the DATA segment, except for integer
data that they cannot unpack (``$PnB`` other than 8/16/32 bits, or a ``$BYTEORD`` other than
``1,2,3,4``/``4,3,2,1``/``1,2``/``2,1``): such DATA is decoded here (``_decode_int_data``). This
module also picks the reader options that real, noncompliant files need and turns reader
exceptions into one error naming the file and the problem. It returns the events as an array
and the TEXT keywords; :mod:`maestro_sc.io._fcs_text` reads the keywords.
"""

from __future__ import annotations

import math
import traceback
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._utils import logger
from ._fcs_text import _channel_keyword

Reader = Literal["auto", "readfcs", "flowio"]

READERS = ("auto", "readfcs", "flowio")
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
