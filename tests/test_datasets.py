"""The simulated cohort (each documented effect is present) and the real-data loaders."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import maestro_sc as mst
from maestro_sc.datasets._synthetic import CELL_TYPES, DIAGNOSES

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "h5ad"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")


@pytest.fixture(scope="module")
def cohort():
    return mst.datasets.synthetic_cohort(80, cells_per_sample=(1500, 3000), random_state=1)


def per_sample(adata: ad.AnnData, column: str = "diagnosis") -> pd.DataFrame:
    """Per-sample cell-type fractions plus the sample-level columns."""
    frac = pd.crosstab(adata.obs["sample"], adata.obs["cell_type"], normalize="index")
    meta = adata.obs.groupby("sample", observed=True)[[column, "age", "batch"]].first()
    return frac.join(meta)


def test_structure(cohort):
    a = cohort
    assert a.X.dtype == np.float32
    assert a.n_vars == 24
    assert list(a.var_names[:4]) == ["CD45", "CD3", "CD4", "CD8"]
    assert set(a.var["marker_class"]) == {"type", "state"}
    for col in ("sample", "donor", "diagnosis", "batch", "cell_type"):
        assert isinstance(a.obs[col].dtype, pd.CategoricalDtype), col
    assert list(a.obs["diagnosis"].cat.categories) == list(DIAGNOSES)
    assert len(CELL_TYPES) >= 10
    assert set(a.obs["cell_type"].unique()) == set(CELL_TYPES)
    # Sample-level columns are constant within a sample.
    nun = a.obs.groupby("sample", observed=True)[["diagnosis", "age", "batch", "donor"]].nunique()
    assert (nun == 1).all().all()
    # Sample order in obs is S01, S02, …
    first = pd.unique(a.obs["sample"].astype(str))
    assert list(first) == sorted(first)
    # On the arcsinh(x/5) scale: off markers near 0, expressed ones at 2–5.
    cd3_t = a[a.obs["cell_type"] == "CD4 T naive", "CD3"].X.mean()
    cd3_b = a[a.obs["cell_type"] == "B naive", "CD3"].X.mean()
    assert 3.0 < cd3_t < 5.0 and abs(cd3_b) < 0.5
    assert a.X.min() < 0


def test_sizes_and_balance():
    a = mst.datasets.synthetic_cohort(
        10, n_markers=40, cells_per_sample=(200, 400), n_batches=3, random_state=3
    )
    assert a.n_vars == 40
    counts = a.obs["sample"].value_counts()
    assert counts.between(200, 400).all()
    dx = a.obs.groupby("sample", observed=True)["diagnosis"].first().value_counts()
    assert dx.max() - dx.min() <= 1
    assert a.obs["batch"].nunique() == 3
    b = mst.datasets.synthetic_cohort(3, n_markers=20, cells_per_sample=50, sample_key="donor_id")
    assert b.n_vars == 20 and b.n_obs == 150 and "donor_id" in b.obs
    c = mst.datasets.synthetic_cohort(3, cells_per_sample=50, sample_key="donor")
    assert list(c.obs["donor"].cat.categories) == ["S1", "S2", "S3"]


def test_reproducible_with_seed():
    a = mst.datasets.synthetic_cohort(6, cells_per_sample=(100, 300), random_state=7)
    b = mst.datasets.synthetic_cohort(6, cells_per_sample=(100, 300), random_state=7)
    c = mst.datasets.synthetic_cohort(6, cells_per_sample=(100, 300), random_state=8)
    np.testing.assert_array_equal(a.X, b.X)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert a.shape != c.shape or not np.array_equal(a.X, c.X)


def test_rare_population_expands(cohort):
    t = per_sample(cohort)
    healthy = t.loc[t["diagnosis"] == "healthy", "Plasmablasts"].mean()
    expanded = t.loc[t["diagnosis"] == "plasmablast_expansion", "Plasmablasts"].mean()
    assert 0.001 < healthy < 0.004
    assert expanded > 2.5 * healthy
    assert 0.006 < expanded < 0.02


def test_major_population_shifts(cohort):
    t = per_sample(cohort)
    healthy = t.loc[t["diagnosis"] == "healthy", "CD14 monocytes"].mean()
    shifted = t.loc[t["diagnosis"] == "monocytosis", "CD14 monocytes"].mean()
    assert shifted > 1.25 * healthy


def test_activation_marker_shift_without_abundance_change(cohort):
    a = cohort
    cd8 = a.obs["cell_type"].astype(str).str.startswith("CD8 T").to_numpy()
    cd38 = a[:, "CD38"].X.ravel()
    dx = a.obs["diagnosis"].to_numpy()
    gain = cd38[cd8 & (dx == "CD8_activation")].mean() - cd38[cd8 & (dx == "healthy")].mean()
    assert gain > 0.5
    # Other cell types keep their CD38 level.
    other = a.obs["cell_type"].to_numpy() == "NK CD56dim"
    assert (
        abs(cd38[other & (dx == "CD8_activation")].mean() - cd38[other & (dx == "healthy")].mean())
        < 0.2
    )
    t = per_sample(a)
    t["CD8 T"] = t[["CD8 T naive", "CD8 T memory", "CD8 T effector"]].sum(axis=1)
    ratio = (
        t.loc[t["diagnosis"] == "CD8_activation", "CD8 T"].mean()
        / t.loc[t["diagnosis"] == "healthy", "CD8 T"].mean()
    )
    assert 0.75 < ratio < 1.33


def test_age_effect(cohort):
    t = per_sample(cohort)
    log_ratio = np.log(t["CD4 T memory"] / t["CD4 T naive"])
    assert np.corrcoef(t["age"], log_ratio)[0, 1] > 0.2
    effector = t["CD8 T effector"] / t[["CD8 T naive", "CD8 T memory", "CD8 T effector"]].sum(
        axis=1
    )
    assert np.corrcoef(t["age"], effector)[0, 1] > 0.1


def test_batch_effect(cohort):
    a = cohort
    rec = a.uns["synthetic"]["batch"]
    batch = a.obs["batch"].to_numpy()
    # Markers off in T cells: their mean there is the batch shift (plus noise).
    t_cells = a.obs["cell_type"].to_numpy() == "CD4 T naive"
    off = ["CD19", "CD20", "CD14", "CD16", "CD57", "Ki-67"]
    x = a[t_cells, off].X
    measured = x[batch[t_cells] == "batch1"].mean(0) - x[batch[t_cells] == "batch2"].mean(0)
    shift = rec["shift"][0] - rec["shift"][1]
    expected = shift[a.var_names.get_indexer(off)]
    assert np.corrcoef(measured, expected)[0, 1] > 0.7
    assert np.abs(measured).max() > 0.05


def test_difficulty_and_record(tmp_path):
    hard = mst.datasets.synthetic_cohort(4, cells_per_sample=100, difficulty="hard")
    easy = mst.datasets.synthetic_cohort(4, cells_per_sample=100, difficulty="easy")
    custom = mst.datasets.synthetic_cohort(4, cells_per_sample=100, difficulty=2.0)
    shift = [
        d.uns["synthetic"]["diagnosis"]["CD8_activation"]["shift"] for d in (hard, easy, custom)
    ]
    assert shift[0] < shift[1] < shift[2]
    rec = easy.uns["synthetic"]["diagnosis"]
    assert rec["plasmablast_expansion"]["cell_type"] == "Plasmablasts"
    assert rec["CD8_activation"]["marker"] == "CD38"
    easy.write_h5ad(tmp_path / "c.h5ad")
    back = ad.read_h5ad(tmp_path / "c.h5ad")
    assert back.uns["synthetic"]["diagnosis"]["monocytosis"]["cell_type"] == "CD14 monocytes"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_markers": 19},
        {"n_markers": 41},
        {"difficulty": "medium"},
        {"difficulty": -1.0},
        {"n_batches": 0},
        {"cells_per_sample": (300, 100)},
        {"n_samples": 0},
        {"sample_key": "diagnosis"},
    ],
)
def test_bad_arguments(kwargs):
    args = {"n_samples": 4, **kwargs}
    with pytest.raises(ValueError):
        mst.datasets.synthetic_cohort(**args)


# Real data -----------------------------------------------------------------------------------


def test_read_shared_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="path="):
        mst.datasets.read_shared("itn_flowstats", path=tmp_path)
    with pytest.raises(ValueError, match="Available"):
        mst.datasets.read_shared("nope")


def test_marker_channels_without_annotation():
    a = ad.AnnData(
        np.zeros((2, 5), dtype=np.float32),
        var=pd.DataFrame(index=["FSC-A", "SSC-H", "CD3", "Time", "Event_length"]),
    )
    assert mst.datasets.marker_channels(a) == ["CD3"]
    with pytest.raises(ValueError, match="name="):
        mst.datasets.preprocess_shared(a)


@needs_shared
@pytest.mark.parametrize(
    ("name", "markers", "label"),
    [
        ("bodenmiller_bcrxl_catalyst", 24, "condition"),
        ("cytodx_flowcap2_aml", 5, "label"),
        ("itn_flowstats", 5, "GroupID"),
        ("cytoexplorer_activation", 8, "OVA_Conc"),
    ],
)
def test_read_and_preprocess_shared(name, markers, label):
    raw = mst.datasets.read_shared(name, path=SHARED)
    assert "sample" in raw.obs and label in raw.obs
    names = mst.datasets.marker_channels(raw)
    assert len(names) == markers
    assert not any(n.startswith(("FSC", "SSC", "Time")) for n in names)
    before = raw.X.copy()
    pre = mst.datasets.preprocess_shared(raw)
    np.testing.assert_array_equal(raw.X, before)
    assert list(pre.var_names) == names
    assert pre.uns["preprocessing"]["cofactor"] == (5.0 if "bcrxl" in name else 150.0)
    assert np.isfinite(pre.X).all() and np.abs(pre.X).max() < 15


@needs_shared
def test_activation_is_compensated_then_transformed():
    raw = mst.datasets.read_shared("cytoexplorer_activation", path=SHARED.parent)
    spill = raw.uns["spillover"]
    cols = raw.var["channel"].tolist()
    idx = [cols.index(c) for c in spill["channels"]]
    comp = raw.X[:, idx].astype(np.float64) @ np.linalg.inv(spill["matrix"])
    pre = mst.datasets.preprocess_shared(raw, "cytoexplorer_activation")
    cd69 = np.arcsinh(comp[:, list(spill["channels"]).index("7-AAD-A")] / 150)
    np.testing.assert_allclose(pre[:, "CD69"].X.ravel(), cd69, rtol=1e-4, atol=1e-4)
    assert pre.uns["preprocessing"]["compensated"]


@needs_shared
def test_read_shared_backed():
    # No path: found relative to the repository.
    backed = mst.datasets.read_shared("cytodx_flowcap2_aml", backed="r")
    assert backed.isbacked
    pre = mst.datasets.preprocess_shared(backed, "cytodx_flowcap2_aml")
    assert pre.n_vars == 5 and not pre.isbacked
