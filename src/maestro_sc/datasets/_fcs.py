"""The synthetic cohort as a folder of raw FCS files with a sample sheet."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .._utils import logger
from ._synthetic import synthetic_cohort

#: Mass-cytometry channels ($PnN) that carry the synthetic markers, in the order of
#: ``MARKERS``: the lanthanide range first (where neighbouring masses spill into each other),
#: then yttrium, indium, lanthanum and bismuth.
CHANNELS: tuple[str, ...] = (
    "Pr141Di", "Nd142Di", "Nd143Di", "Nd144Di", "Nd145Di", "Nd146Di", "Sm147Di", "Nd148Di",
    "Sm149Di", "Nd150Di", "Eu151Di", "Sm152Di", "Eu153Di", "Sm154Di", "Gd155Di", "Gd156Di",
    "Gd158Di", "Tb159Di", "Gd160Di", "Dy161Di", "Dy162Di", "Dy163Di", "Dy164Di", "Ho165Di",
    "Er166Di", "Er167Di", "Er168Di", "Tm169Di", "Er170Di", "Yb171Di", "Yb172Di", "Yb173Di",
    "Yb174Di", "Lu175Di", "Yb176Di", "Y89Di", "In115Di", "La139Di", "Bi209Di", "Pt195Di",
)  # fmt: skip
#: Spillover of a channel into the channel one mass up (M+1), one mass down (M-1) and 16
#: masses up (M+16, the oxide): the order of magnitude of mass-cytometry spillover.
SPILL_M_PLUS_1, SPILL_M_MINUS_1, SPILL_OXIDE = 0.02, 0.01, 0.015
#: Non-marker channels written first in every file.
EXTRA_CHANNELS: tuple[str, ...] = ("Time", "Event_length")
SAMPLE_SHEET = "samples.csv"


def _mass(channel: str) -> int:
    return int(re.search(r"\d+", channel).group())


def synthetic_spillover(channels: list[str]) -> pd.DataFrame:
    """The spillover matrix of the synthetic FCS files over ``channels`` (rows spill into columns).

    Each channel spills 2 % of its signal into the channel of the next mass (M+1), 1 % into the
    previous mass (M-1) and 1.5 % into the mass 16 higher (the oxide, M+16), when those channels
    are in the panel.
    """
    mass = {c: _mass(c) for c in channels}
    spill = pd.DataFrame(np.eye(len(channels)), index=channels, columns=channels)
    for src in channels:
        for dst in channels:
            gap = mass[dst] - mass[src]
            if gap == 1:
                spill.loc[src, dst] = SPILL_M_PLUS_1
            elif gap == -1:
                spill.loc[src, dst] = SPILL_M_MINUS_1
            elif gap == 16:
                spill.loc[src, dst] = SPILL_OXIDE
    return spill


def write_synthetic_fcs(
    folder: str | os.PathLike,
    n_samples: int = 40,
    *,
    n_markers: int = 24,
    cells_per_sample: int | tuple[int, int] = (500, 3000),
    n_batches: int = 2,
    difficulty: str | float = "easy",
    cofactor: float = 5.0,
    random_state: int | None = 0,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic cohort as raw FCS files, one per sample, plus a sample sheet.

    The cells of :func:`synthetic_cohort` (same arguments, same seed: the same cells) are
    written as a mass-cytometry acquisition would give them: untransformed values
    (``cofactor * sinh(x)`` of the cohort's arcsinh-scale values ``x``), each marker on a
    metal channel (``$PnN`` such as ``Pr141Di``, marker name in ``$PnS``), mixed by a small
    spillover matrix (M+1: 2 %, M-1: 1 %, M+16: 1.5 %) that the files carry as ``$SPILLOVER``,
    after two acquisition channels (``Time``, ``Event_length``). Compensating with the file's
    matrix and transforming with ``arcsinh(x / cofactor)`` gives back the cohort's values
    (up to float32 precision):

    .. code-block:: python

        adata = mst.io.read_fcs_folder(folder, metadata=sheet)
        mst.pp.compensate(adata)        # the files' $SPILLOVER
        mst.pp.select_markers(adata)    # drops Time and Event_length
        mst.pp.arcsinh(adata, cofactor=5)

    The sample sheet ``samples.csv`` has one row per file: ``sample`` (the file stem, which
    :func:`~maestro_sc.io.read_fcs_folder` matches to the files), ``file``, ``donor``,
    ``diagnosis``, ``age`` and ``batch``.

    Parameters
    ----------
    folder
        Where to write ``S01.fcs``, ``S02.fcs``, ... and ``samples.csv``; created if needed.
    n_samples, n_markers, cells_per_sample, n_batches, difficulty, random_state
        As in :func:`synthetic_cohort`.
    cofactor
        The values written are ``cofactor * sinh(x)``; transform them back with
        ``mst.pp.arcsinh(adata, cofactor=cofactor)``.
    overwrite
        Replace files of the same names; by default an existing one raises
        ``FileExistsError`` before anything is written.

    Returns
    -------
    Path
        The sample sheet (``folder / "samples.csv"``), to pass as
        ``read_fcs_folder(folder, metadata=...)``.

    Raises
    ------
    ValueError
        If ``cofactor`` is not a positive number, or an argument of :func:`synthetic_cohort`
        is invalid.
    TypeError
        If ``folder`` is not a path.
    FileExistsError
        If a file to be written exists and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile
    >>> import maestro_sc as mst
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     sheet = mst.datasets.write_synthetic_fcs(
    ...         folder, n_samples=4, cells_per_sample=200, random_state=0
    ...     )
    ...     adata = mst.io.read_fcs_folder(folder, metadata=sheet, progress=False)
    >>> adata.obs["sample"].cat.categories.tolist()
    ['S1', 'S2', 'S3', 'S4']
    >>> adata.var_names[:4].tolist(), adata.var["channel"].iloc[2]
    (['Time', 'Event_length', 'CD45', 'CD3'], 'Pr141Di')
    """
    if not isinstance(folder, str | os.PathLike):
        raise TypeError(f"`folder` must be a str or Path, got {type(folder).__name__}.")
    if isinstance(cofactor, bool) or not isinstance(cofactor, int | float | np.number):
        raise TypeError(f"`cofactor` must be a number, got {type(cofactor).__name__}.")
    if not (np.isfinite(cofactor) and cofactor > 0):
        raise ValueError(f"cofactor={cofactor!r} must be a positive number (5 for CyTOF).")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; pass a folder to write the FCS files in.")
    cohort = synthetic_cohort(
        n_samples,
        n_markers=n_markers,
        cells_per_sample=cells_per_sample,
        n_batches=n_batches,
        difficulty=difficulty,
        random_state=random_state,
    )
    samples = list(cohort.obs["sample"].cat.categories)
    files = [f"{s}.fcs" for s in samples]
    targets = [folder / f for f in [*files, SAMPLE_SHEET]]
    existing = [p.name for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{len(existing)} file(s) to be written exist in {str(folder)!r}: "
            f"{existing[:5]}{' ...' if len(existing) > 5 else ''}; pass overwrite=True to "
            "replace them, or choose an empty folder."
        )
    if folder.is_dir():
        others = sorted(
            p.name
            for p in folder.iterdir()
            if p.suffix.lower() == ".fcs" and p.name not in set(files)
        )
        if others:
            warnings.warn(
                f"{str(folder)!r} holds other FCS files ({others[:5]}); read_fcs_folder on "
                "this folder reads them too. Write to an empty folder to keep the cohort apart.",
                UserWarning,
                stacklevel=2,
            )
    folder.mkdir(parents=True, exist_ok=True)

    from ..io import write_fcs

    markers = [str(m) for m in cohort.var_names]
    channels = list(CHANNELS[: len(markers)])
    spill = synthetic_spillover(channels)
    mix = spill.to_numpy()
    raw = cofactor * np.sinh(np.asarray(cohort.X, dtype=np.float64)) @ mix
    rng = np.random.default_rng(random_state)
    codes = cohort.obs["sample"].cat.codes.to_numpy()
    obs = cohort.obs
    rows = []
    for i, (sample, file) in enumerate(zip(samples, files, strict=True)):
        cells = np.flatnonzero(codes == i)
        n = cells.size
        time = np.sort(rng.uniform(0.0, 60.0 * n, n)).round(1)
        length = rng.integers(10, 40, n).astype(np.float64)
        values = np.column_stack([time, length, raw[cells]])
        first = obs.iloc[cells[0]]
        write_fcs(
            folder / file,
            values,
            [*EXTRA_CHANNELS, *channels],
            markers=[None] * len(EXTRA_CHANNELS) + markers,
            spillover=spill,
            metadata={
                "$CYT": "maestro_sc synthetic cohort",
                "$SMNO": sample,
                "$FIL": file,
            },
            overwrite=True,
        )
        rows.append(
            {
                "sample": sample,
                "file": file,
                "donor": str(first["donor"]),
                "diagnosis": str(first["diagnosis"]),
                "age": float(first["age"]),
                "batch": str(first["batch"]),
            }
        )
    sheet = folder / SAMPLE_SHEET
    pd.DataFrame(rows).to_csv(sheet, index=False)
    logger.info("write_synthetic_fcs: %d FCS files and %s in %s", len(files), SAMPLE_SHEET, folder)
    return sheet
