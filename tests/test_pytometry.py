"""Coming from pytometry: FCS files read, compensated and transformed with pytometry, then
embedded with maestro_sc (the path of docs/io.md, "Coming from pytometry")."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import maestro_sc as mst

from .conftest import EMBED_DIM, TINY

pm = pytest.importorskip("pytometry")
flowio = pytest.importorskip("flowio")

pytestmark = [
    # anndata's note when readfcs builds var from $PnS; not about these data.
    pytest.mark.filterwarnings("ignore:Transforming to str index:UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

#: pytometry 0.1.6's ``pp.compensate`` calls ``np.in1d``, which numpy 2.4 removed.
PYTOMETRY_COMPENSATE_BROKEN = not hasattr(np, "in1d")
BROKEN_REASON = (
    f"pytometry {pm.__version__}'s pp.compensate calls np.in1d, which numpy 2.4 removed "
    f"(installed: numpy {np.__version__}); it raises AttributeError before compensating. "
    "The maestro_sc variant (mst.pp.compensate on the same uns['meta']['spill']) still runs."
)

COFACTOR = 5
#: A few seconds of training.
TRAIN = dict(preset="cpu", max_epochs=1, **TINY)


def spillover(channels: list[str]) -> np.ndarray:
    """A spillover matrix with a few off-diagonal terms (detector i leaks into detector j)."""
    n = len(channels)
    spill = np.eye(n)
    for i in range(0, n - 1, 3):
        spill[i, i + 1] = 0.08
        spill[i + 1, i] = 0.02
    return spill


def write_fcs_files(folder: Path, n_files: int = 3) -> tuple[list[Path], list[np.ndarray]]:
    """Write ``n_files`` FCS files of raw values; return the paths and each file's true
    arcsinh values (what compensation and ``arcsinh(x / 5)`` should give back)."""
    cohort = mst.datasets.synthetic_cohort(
        n_samples=n_files, cells_per_sample=(200, 400), random_state=0
    )
    markers = list(cohort.var_names)
    channels = [f"FL{j + 1}-A" for j in range(len(markers))]
    spill = spillover(channels)
    # FCS $SPILLOVER: n, the n channel names ($PnN), then the matrix row by row.
    spill_text = ",".join([str(len(channels)), *channels, *(f"{v:g}" for v in spill.ravel())])
    paths, truth = [], []
    for sample in cohort.obs["sample"].cat.categories:
        values = np.asarray(cohort[cohort.obs["sample"] == sample].X, dtype=np.float64)
        raw = COFACTOR * np.sinh(values)  # the untransformed intensities
        measured = raw @ spill  # what the detectors record: the spillover adds up
        path = folder / f"{sample}.fcs"
        with open(path, "wb") as handle:
            flowio.create_fcs(
                handle,
                measured.astype(np.float32).ravel(),
                channels,
                opt_channel_names=markers,  # $PnS: the markers
                metadata_dict={"SPILLOVER": spill_text},
            )
        paths.append(path)
        truth.append(values)
    return paths, truth


def compensate_with(kind: str):
    if kind == "pytometry":
        return pm.pp.compensate  # spillover from uns["meta"]["spill"], in place
    return mst.pp.compensate  # looks in uns["meta"] too; same formula


@pytest.mark.parametrize(
    "compensator",
    [
        pytest.param(
            "pytometry",
            marks=pytest.mark.skipif(PYTOMETRY_COMPENSATE_BROKEN, reason=BROKEN_REASON),
        ),
        "maestro_sc",
    ],
)
def test_pytometry_files_to_sample_embeddings(tmp_path, compensator):
    paths, truth = write_fcs_files(tmp_path)
    compensate = compensate_with(compensator)

    # The user's path (docs/io.md, "Coming from pytometry").
    adatas = []
    for path in paths:
        adata = pm.io.read_fcs(str(path))  # var_names: the markers; spillover in uns["meta"]
        assert isinstance(adata.uns["meta"]["spill"], pd.DataFrame)
        assert adata.X.max() > 100  # raw values
        compensate(adata)
        pm.tl.normalize_arcsinh(adata, cofactor=COFACTOR)  # in place
        adatas.append(adata)
    cells = ad.concat(adatas, label="sample", keys=[p.stem for p in paths], index_unique="-")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*untransformed")  # they are transformed
        sdata = mst.tl.embed_samples(
            cells, "sample", progress=False, umap=False, random_state=0, **TRAIN
        )

    # Compensation and the transform give back the values the raw files were made from.
    np.testing.assert_allclose(cells.X, np.concatenate(truth), atol=1e-4)
    assert sdata.n_obs == len(paths)
    assert list(sdata.obs_names) == [p.stem for p in paths]
    assert sdata.obs["n_cells"].tolist() == [len(t) for t in truth]
    assert np.isfinite(sdata.obsm["X_maestro"]).all()
    assert sdata.obsm["X_maestro"].shape[1] == EMBED_DIM


def test_pytometry_compensate_is_broken_as_described(tmp_path):
    """Keeps the skip above honest: it fires only while pytometry really fails this way."""
    if not PYTOMETRY_COMPENSATE_BROKEN:
        pytest.skip(f"numpy {np.__version__} still has np.in1d; pytometry's compensate runs")
    (path,), _ = write_fcs_files(tmp_path, n_files=1)
    adata = pm.io.read_fcs(str(path))
    with pytest.raises(AttributeError, match="in1d"):
        pm.pp.compensate(adata)
