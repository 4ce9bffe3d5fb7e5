"""FCS import: :func:`read_fcs` for one file and :func:`read_fcs_folder` for a cohort.

A file's events come from :mod:`maestro_sc.io._fcs_events` (readfcs, flowio, or the integer
decoder) and its annotations from :mod:`maestro_sc.io._fcs_text`; a folder's files are joined
on their shared markers, with the per-file metadata as ``obs`` columns.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from .._utils import logger
from ._fcs_events import READERS, Reader, _check_fcs_signature, _read_events
from ._fcs_text import (
    _channels,
    _is_missing,
    _keywords,
    _panel_mapping,
    _spillover,
    _spillover_for_uns,
    _var_table,
)

PathLike = str | Path

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
    if reader not in READERS:
        raise ValueError(f"`reader` must be one of {READERS}, got {reader!r}.")
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
    if reader not in READERS:
        raise ValueError(f"`reader` must be one of {READERS}, got {reader!r}.")
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
