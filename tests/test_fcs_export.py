"""FCS export: ``mst.io.write_fcs`` round trips, its input checks, the synthetic FCS cohort and
the whole path from freshly written files to plots."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import maestro_sc as mst
from maestro_sc.datasets._fcs import CHANNELS, synthetic_spillover

from .conftest import TINY

CHANNEL_NAMES = ["FSC-A", "FL1-A", "BL 530/30-A", "Time"]


def _quiet_read(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return mst.io.read_fcs(path, **kwargs)


@pytest.fixture
def events():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 500, size=(50, len(CHANNEL_NAMES)))
    x[:, 3] = np.sort(rng.uniform(0, 1e6, 50))  # Time, beyond the default $PnR
    return x.astype(np.float32)


# ------------------------------------------------------------------------------------------
# write_fcs round trips
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["readfcs", "flowio"])
def test_round_trip_values_names_spillover(tmp_path, events, reader):
    spill = pd.DataFrame(
        [[1.0, 0.02], [0.013, 1.0]],
        index=["FL1-A", "BL 530/30-A"],
        columns=["FL1-A", "BL 530/30-A"],
    )
    path = mst.io.write_fcs(
        tmp_path / "tube.fcs",
        events,
        CHANNEL_NAMES,
        markers=[None, "CD3", "CD4", ""],
        spillover=spill,
        metadata={"$CYT": "LSRII", "PROJECT": "a/b"},
    )
    assert path == tmp_path / "tube.fcs"
    adata = mst.io.read_fcs(path, reader=reader)
    np.testing.assert_array_equal(adata.X, events)
    assert list(adata.var["channel"]) == CHANNEL_NAMES
    assert list(adata.var["marker"]) == ["", "CD3", "CD4", ""]
    assert list(adata.var_names) == ["FSC-A", "CD3", "CD4", "Time"]
    assert list(adata.var["type"]) == ["scatter", "marker", "marker", "time"]
    assert adata.var["PnR"].iloc[0] == 262144
    assert adata.var["PnR"].iloc[3] >= events[:, 3].max()
    assert adata.uns["fcs"]["fcs_version"] == "3.1"
    assert adata.uns["fcs"]["datatype"] == "F"
    assert adata.uns["fcs"]["cyt"] == "LSRII"
    assert adata.uns["fcs"]["project"] == "a/b"
    # A "/" in a channel name: read_fcs stores the matrix as {"channels", "matrix"}.
    stored = adata.uns["spillover"]
    assert list(stored["channels"]) == ["FL1-A", "BL 530/30-A"]
    np.testing.assert_array_equal(stored["matrix"], spill.to_numpy())


def test_spillover_keyword_is_the_standard_text(tmp_path, events):
    spill = "2,FL1-A,FSC-A,1,0.1,0.05,1"
    path = mst.io.write_fcs(tmp_path / "a.fcs", events, CHANNEL_NAMES, spillover=spill)
    import flowio

    text = flowio.FlowData(str(path)).text
    assert text["spillover"] == "2,FL1-A,FSC-A,1.0,0.1,0.05,1.0"
    frame = _quiet_read(path).uns["spillover"]
    assert list(frame.columns) == ["FL1-A", "FSC-A"]
    np.testing.assert_array_equal(frame.to_numpy(), [[1, 0.1], [0.05, 1]])


def test_anndata_round_trip(tmp_path, events):
    spill = pd.DataFrame([[1.0, 0.1], [0.0, 1.0]], columns=["FSC-A", "FL1-A"])
    first = mst.io.write_fcs(
        tmp_path / "a.fcs", events, CHANNEL_NAMES, markers={"FL1-A": "CD3"}, spillover=spill
    )
    adata = _quiet_read(first)
    again = mst.io.write_fcs(tmp_path / "b.fcs", adata, spillover=adata.uns["spillover"])
    back = _quiet_read(again)
    np.testing.assert_array_equal(back.X, adata.X)
    pd.testing.assert_frame_equal(back.var, adata.var)
    pd.testing.assert_frame_equal(back.uns["spillover"], adata.uns["spillover"])
    # No spillover unless it is passed; a layer instead of X.
    adata.layers["double"] = adata.X * 2
    plain = _quiet_read(mst.io.write_fcs(tmp_path / "c.fcs", adata, layer="double"))
    assert "spillover" not in plain.uns
    np.testing.assert_array_equal(plain.X, events * 2)


def test_anndata_without_channel_column_and_sparse(tmp_path):
    from scipy import sparse

    adata = ad.AnnData(
        sparse.csr_matrix(np.array([[0.0, 3.0], [1.0, 0.0]], dtype=np.float32)),
        var=pd.DataFrame(index=["CD3", "CD19"]),
    )
    back = _quiet_read(mst.io.write_fcs(tmp_path / "s.fcs", adata))
    assert list(back.var["channel"]) == ["CD3", "CD19"]
    np.testing.assert_array_equal(back.X, [[0, 3], [1, 0]])


def test_no_events(tmp_path):
    path = mst.io.write_fcs(tmp_path / "empty.fcs", np.zeros((0, 2)), ["A", "B"])
    assert _quiet_read(path).shape == (0, 2)


def test_transformed_anndata_warns(tmp_path):
    adata = ad.AnnData(np.ones((3, 2), dtype=np.float32), var=pd.DataFrame(index=["a", "b"]))
    mst.pp.arcsinh(adata, cofactor=5)
    with pytest.warns(UserWarning, match="arcsinh-transformed"):
        mst.io.write_fcs(tmp_path / "t.fcs", adata)


def test_existing_file_needs_overwrite(tmp_path, events):
    path = tmp_path / "a.fcs"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mst.io.write_fcs(path, events, CHANNEL_NAMES)
    assert path.read_bytes() == b"keep me"
    mst.io.write_fcs(path, events, CHANNEL_NAMES, overwrite=True)
    np.testing.assert_array_equal(_quiet_read(path).X, events)


BAD_INPUTS = {
    "1-D values": (dict(data=np.zeros(4)), ValueError, "2-D"),
    "text values": (dict(data=np.array([["a"] * 4])), TypeError, "numbers"),
    "NaN": (dict(data=np.full((2, 4), np.nan)), ValueError, "NaN"),
    "too large": (dict(data=np.full((2, 4), 1e300)), ValueError, "float32 range"),
    "no channels given": (dict(channels=None), TypeError, "channels"),
    "channel count": (dict(channels=["a", "b"]), ValueError, "one name per column"),
    "channel comma": (dict(channels=["a,b", "c", "d", "e"]), ValueError, "comma"),
    "channel twice": (dict(channels=["a", "a", "d", "e"]), ValueError, "unique"),
    "channel empty": (dict(channels=["", "c", "d", "e"]), ValueError, "empty"),
    "channel not str": (dict(channels=[1, "c", "d", "e"]), TypeError, "strings"),
    "marker count": (dict(markers=["CD3"]), ValueError, "one per channel"),
    "marker unknown channel": (dict(markers={"FL9-A": "CD3"}), KeyError, "FL9-A"),
    "spill unknown channel": (
        dict(spillover=pd.DataFrame(np.eye(2), columns=["FL1-A", "FL9-A"])),
        KeyError,
        "FL9-A",
    ),
    "spill singular": (
        dict(spillover=pd.DataFrame(np.ones((2, 2)), columns=["FL1-A", "Time"])),
        ValueError,
        "singular",
    ),
    "spill not square": ("2,FL1-A,Time,1,0", ValueError, "fields"),
    "spill type": (dict(spillover=3), TypeError, "spillover"),
    "reserved keyword": (dict(metadata={"$PAR": "4"}), ValueError, "set by write_fcs"),
    "channel keyword": (dict(metadata={"$P1N": "x"}), ValueError, "set by write_fcs"),
    "spill keyword": (dict(metadata={"$SPILL": "x"}), ValueError, "spillover="),
    "empty value": (dict(metadata={"$CYT": " "}), ValueError, "empty"),
    "value type": (dict(metadata={"$CYT": [1]}), TypeError, "string or a number"),
    "layer of an array": (dict(layer="raw"), TypeError, "AnnData"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_fails_before_writing(tmp_path, events, name):
    change, error, match = BAD_INPUTS[name]
    if isinstance(change, str):
        change = dict(spillover=change)
    args = dict(data=events, channels=CHANNEL_NAMES) | change
    path = tmp_path / "out.fcs"
    with pytest.raises(error, match=match):
        mst.io.write_fcs(path, args.pop("data"), args.pop("channels"), **args)
    assert not path.exists()


def test_bad_paths(tmp_path, events):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mst.io.write_fcs(tmp_path / "missing" / "a.fcs", events, CHANNEL_NAMES)
    with pytest.raises(ValueError, match="is a folder"):
        mst.io.write_fcs(tmp_path, events, CHANNEL_NAMES)
    with pytest.raises(TypeError, match="path"):
        mst.io.write_fcs(3, events, CHANNEL_NAMES)


# ------------------------------------------------------------------------------------------
# The synthetic cohort as FCS files
# ------------------------------------------------------------------------------------------

COHORT = dict(n_samples=6, cells_per_sample=(150, 300), random_state=0)


def test_synthetic_spillover_is_small_and_not_identity():
    spill = synthetic_spillover(list(CHANNELS[:24]))
    off = spill.to_numpy() - np.eye(24)
    assert off.max() <= 0.02 and off.min() == 0 and (off > 0).sum() > 20
    assert spill.loc["Nd142Di", "Nd143Di"] == 0.02
    assert spill.loc["Nd143Di", "Nd142Di"] == 0.01
    assert spill.loc["Nd142Di", "Gd158Di"] == 0.015
    assert len(set(CHANNELS)) == len(CHANNELS) == len(mst.datasets._synthetic.MARKERS)


def test_write_synthetic_fcs_files_and_sheet(tmp_path):
    sheet = mst.datasets.write_synthetic_fcs(tmp_path / "fcs", **COHORT)
    assert sheet == tmp_path / "fcs" / "samples.csv"
    table = pd.read_csv(sheet)
    assert list(table.columns) == ["sample", "file", "donor", "diagnosis", "age", "batch"]
    assert sorted(p.name for p in sheet.parent.glob("*.fcs")) == sorted(table["file"])
    cohort = mst.datasets.synthetic_cohort(**COHORT)
    per_sample = cohort.obs.groupby("sample", observed=True).first()
    assert list(table["sample"]) == list(per_sample.index)
    assert list(table["diagnosis"]) == list(per_sample["diagnosis"].astype(str))
    np.testing.assert_allclose(table["age"], per_sample["age"])
    one = _quiet_read(sheet.parent / "S1.fcs")
    assert list(one.var_names[:2]) == ["Time", "Event_length"]
    assert list(one.var_names[2:]) == list(cohort.var_names)
    # Raw values: far beyond the arcsinh scale.
    assert np.abs(one.X[:, 2:]).max() > 50
    # A second call refuses to overwrite, before writing anything; overwrite=True replaces.
    before = sheet.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mst.datasets.write_synthetic_fcs(tmp_path / "fcs", **COHORT)
    assert sheet.stat().st_mtime_ns == before
    mst.datasets.write_synthetic_fcs(tmp_path / "fcs", **COHORT, overwrite=True)


def test_write_synthetic_fcs_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="cofactor"):
        mst.datasets.write_synthetic_fcs(tmp_path, cofactor=0)
    with pytest.raises(TypeError, match="folder"):
        mst.datasets.write_synthetic_fcs(None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        mst.datasets.write_synthetic_fcs(tmp_path / "file")
    with pytest.raises(ValueError, match="n_samples"):
        mst.datasets.write_synthetic_fcs(tmp_path / "new", n_samples=0)
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------
# The whole path on freshly written files
# ------------------------------------------------------------------------------------------

TRAIN = dict(preset="cpu", max_epochs=1, **TINY)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_fcs_files_to_embeddings_and_plots(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = tmp_path / "fcs"
    sheet = mst.datasets.write_synthetic_fcs(folder, **COHORT)
    adata = mst.io.read_fcs_folder(folder, metadata=sheet, progress=False)
    assert adata.obs["sample"].nunique() == COHORT["n_samples"]
    assert {"diagnosis", "age", "batch", "donor"} <= set(adata.obs.columns)
    spill = adata.uns["spillover"]
    assert not np.allclose(spill.to_numpy(), np.eye(spill.shape[0]))

    mst.pp.compensate(adata)
    mst.pp.select_markers(adata)
    mst.pp.arcsinh(adata, cofactor=5)

    cohort = mst.datasets.synthetic_cohort(**COHORT)
    assert list(adata.var_names) == list(cohort.var_names)
    assert list(adata.obs["sample"].astype(str)) == list(cohort.obs["sample"].astype(str))
    np.testing.assert_allclose(adata.X, cohort.X, atol=1e-4)
    # Without compensation the values differ: the spillover is not a no-op.
    raw = mst.io.read_fcs_folder(folder, metadata=sheet, progress=False)
    mst.pp.select_markers(raw)
    mst.pp.arcsinh(raw, cofactor=5)
    assert np.abs(raw.X - cohort.X).max() > 0.01

    sdata = mst.tl.embed_samples(adata, "sample", progress=False, n_neighbors=3, **TRAIN)
    assert sdata.n_obs == COHORT["n_samples"]
    assert list(sdata.obs_names) == list(pd.read_csv(sheet)["sample"])
    assert np.isfinite(sdata.obsm["X_maestro"]).all()
    assert set(sdata.obs["diagnosis"]) == set(pd.read_csv(sheet)["diagnosis"])

    png = tmp_path / "umap.png"
    mst.pl.embedding(sdata, color="diagnosis", save=png, show=False)
    assert png.is_file() and png.stat().st_size > 0

    assert mst.tl.nn_contingency(sdata, "diagnosis") is None
    table = mst.get.result_df(sdata, "nn_diagnosis_X_maestro")
    assert int(table.to_numpy().sum()) == COHORT["n_samples"]
    ax = mst.pl.nn_contingency(sdata, "diagnosis", show=False)
    assert ax is not None
    plt.close("all")


def test_paths_are_returned_as_path(tmp_path, events):
    out = mst.io.write_fcs(str(tmp_path / "a.fcs"), events, CHANNEL_NAMES)
    assert isinstance(out, Path)
