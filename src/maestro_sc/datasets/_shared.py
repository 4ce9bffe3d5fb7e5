"""Loaders for the public cohorts stored as ``.h5ad`` in ``../shared/data/h5ad``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._utils import logger

#: The real cohorts: file name, technology, the transform the benchmarks use, sample labels.
SHARED_SETS: dict[str, dict[str, Any]] = {
    "cytoexplorer_activation": {
        "file": "cytoexplorer_activation.h5ad",
        "technology": "flow",
        "compensate": True,
        "cofactor": 150.0,
        "labels": ["OVA_Conc", "Treatment"],
    },
    "bodenmiller_bcrxl_catalyst": {
        "file": "bodenmiller_bcrxl_catalyst.h5ad",
        "technology": "mass",
        "compensate": False,
        "cofactor": 5.0,
        "labels": ["condition"],
    },
    "cytodx_flowcap2_aml": {
        "file": "cytodx_flowcap2_aml.h5ad",
        "technology": "flow",
        "compensate": False,
        "cofactor": 150.0,
        "labels": ["label"],
    },
    "itn_flowstats": {
        "file": "itn_flowstats.h5ad",
        "technology": "flow",
        "compensate": False,
        "cofactor": 150.0,
        "labels": ["GroupID"],
    },
}

#: Environment variable that may point at the folder holding the ``.h5ad`` files.
DATA_ENV = "MAESTRO_SC_DATA"


def _check_name(name: str) -> dict[str, Any]:
    if name not in SHARED_SETS:
        raise ValueError(f"Unknown data set {name!r}. Available: {sorted(SHARED_SETS)}.")
    return SHARED_SETS[name]


def _candidate_dirs(path: str | os.PathLike | None) -> list[Path]:
    if path is not None:
        p = Path(path).expanduser()
        return [p, p / "h5ad", p / "data" / "h5ad"]
    dirs = []
    if os.environ.get(DATA_ENV):
        p = Path(os.environ[DATA_ENV]).expanduser()
        dirs += [p, p / "h5ad"]
    repo = Path(__file__).resolve().parents[3]
    for root in (Path.cwd(), Path.cwd().parent, repo):
        dirs.append(root / ".." / "shared" / "data" / "h5ad")
    return dirs


def shared_path(name: str, path: str | os.PathLike | None = None) -> Path:
    """Where the ``.h5ad`` file of data set ``name`` lies (raises if it is nowhere)."""
    info = _check_name(name)
    if path is not None and Path(path).is_file():
        return Path(path)
    tried = _candidate_dirs(path)
    for d in tried:
        f = d / info["file"]
        if f.is_file():
            return f.resolve()
    where = "\n  ".join(str(d.resolve() if d.exists() else d) for d in tried)
    raise FileNotFoundError(
        f"Could not find {info['file']!r}. Looked in:\n  {where}\n"
        "Pass the folder that holds it (or the file itself) as `path=`, or set the environment "
        f"variable {DATA_ENV}."
    )


def read_shared(
    name: str, path: str | os.PathLike | None = None, *, backed: str | None = None
) -> Any:
    """Read one of the public cohorts of ``../shared/data/h5ad``, values as stored (raw).

    ==============================  ====================================  ===================
    name                            what                                  labels
    ==============================  ====================================  ===================
    ``cytoexplorer_activation``     mouse T-cell activation, flow, 33 s.  OVA_Conc, Treatment
    ``bodenmiller_bcrxl_catalyst``  PBMC mass cytometry, 8 samples        condition
    ``cytodx_flowcap2_aml``         FlowCAP-II AML, flow, 20 samples      label
    ``itn_flowstats``               whole blood, flow, 15 samples         GroupID
    ==============================  ====================================  ===================

    Every set has ``obs["sample"]``; see ``../shared/data/README.md``. Apply the recommended
    transform with :func:`preprocess_shared`.

    Parameters
    ----------
    name
        One of the names above.
    path
        The folder holding the ``.h5ad`` files (or its parent, or the file itself). Default:
        ``$MAESTRO_SC_DATA``, then ``../shared/data/h5ad`` relative to the working directory,
        its parent and the repository.
    backed
        ``"r"`` to open the file backed (read on demand) instead of loading it.

    Returns
    -------
    AnnData of cells; ``uns["dataset"]`` holds ``name``.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.read_shared("cytodx_flowcap2_aml")  # doctest: +SKIP
    >>> adata = mst.datasets.preprocess_shared(adata)  # doctest: +SKIP
    """
    import anndata as ad

    file = shared_path(name, path)
    adata = ad.read_h5ad(file, backed=backed)
    if backed is None:
        adata.uns["dataset"] = name
    logger.info("read_shared: %s from %s (%d cells × %d channels)", name, file, *adata.shape)
    return adata


def marker_channels(adata: Any) -> list[str]:
    """The marker channels of ``adata``: no scatter, time or other (unstained) channels.

    Uses ``var["type"]`` or ``var["channel_type"]`` (value ``"marker"``), else
    ``var["marker_class"]`` (everything but ``"none"``), else name patterns
    (:data:`maestro_sc.pp.DEFAULT_EXCLUDE`).

    Parameters
    ----------
    adata
        AnnData of cells.

    Returns
    -------
    Marker names, in ``var_names`` order.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=4, random_state=0)
    >>> len(mst.datasets.marker_channels(adata))
    24
    """
    from ..pp._simple import pattern_markers

    var = adata.var
    for col in ("type", "channel_type"):
        if col in var.columns:
            keep = (var[col].astype(str) == "marker").to_numpy()
            return [str(v) for v in adata.var_names[keep]]
    if "marker_class" in var.columns:
        keep = (var["marker_class"].astype(str) != "none").to_numpy()
        return [str(v) for v in adata.var_names[keep]]
    return pattern_markers(adata)


def preprocess_shared(adata: Any, name: str | None = None) -> Any:
    """Apply the README's recommended preprocessing to a shared cohort; returns a new AnnData.

    Flow sets: compensation with ``uns["spillover"]`` (the activation set only), then
    ``arcsinh(x / 150)``; the mass-cytometry set (BCR-XL): ``arcsinh(x / 5)``. Then only the
    marker channels (:func:`marker_channels`) are kept. The input is not modified.

    Parameters
    ----------
    adata
        AnnData from :func:`read_shared` (in memory or backed).
    name
        The data set's name; default ``adata.uns["dataset"]`` (set by :func:`read_shared`).

    Returns
    -------
    A new AnnData of the marker channels, transformed; ``uns["preprocessing"]`` says how.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.read_shared("bodenmiller_bcrxl_catalyst")  # doctest: +SKIP
    >>> adata = mst.datasets.preprocess_shared(adata)  # doctest: +SKIP
    """
    from .. import pp

    if name is None:
        name = adata.uns.get("dataset") if "dataset" in adata.uns else None
        if name is None:
            raise ValueError(
                "Which data set is this? Pass `name=` (one of "
                f"{sorted(SHARED_SETS)}); it is only inferred from uns['dataset']."
            )
    info = _check_name(str(name))
    out = adata.to_memory() if adata.isbacked else adata.copy()
    if info["compensate"]:
        pp.compensate(out)
    markers = marker_channels(out)
    pp.select_markers(out, markers)
    pp.arcsinh(out, cofactor=info["cofactor"])
    out.uns["dataset"] = str(name)
    out.uns["preprocessing"] = {
        "compensated": bool(info["compensate"]),
        "transform": "arcsinh",
        "cofactor": float(info["cofactor"]),
        "markers": markers,
    }
    return out
