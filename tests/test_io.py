"""FCS import (issue 7): the reader zoo, the activation files and small FCS files made here."""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import maestro_sc as mst

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ZOO = DATA / "fcs" / "zoo"
ACTIVATION = DATA / "fcs" / "activation"
ACTIVATION_H5AD = DATA / "h5ad" / "cytoexplorer_activation.h5ad"

# Valid files that readfcs refuses and flowio reads only with a workaround option.
NEEDS_OPTION = {
    "bd_lsrii_spill_all_pns_fcs30.fcs": "ignore_offset_error=True",
    "miltenyi_macsquant_spillover_fcs31.fcs": "ignore_offset_error=True",
    "miltenyi_macsquant_duplicate_names_fcs31.fcs": "ignore_offset_error=True",
    "beckman_cyan_fcs30.fcs": "use_header_offsets=True",
}
# readfcs fails on this one only in its var re-indexing (a spillover channel that is not a
# $PnN), which read_fcs does not use.
READFCS_WITHOUT_REINDEX = {"stratedigm_s1400exi_variable_int_fcs30.fcs"}
# Valid per the manifest, but neither readfcs nor flowio can unpack 24-bit integers.
UNREADABLE_VALID = {"cytek_xp3_int24_fcs30.fcs": "24 bits"}


def _manifest() -> list[dict[str, str]]:
    path = ZOO / "manifest.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _zoo_params():
    rows = _manifest()
    if not rows:
        return [pytest.param(None, marks=pytest.mark.skip(reason="../shared/data is absent"))]
    return [pytest.param(r, id=r["file"]) for r in rows]


def _quiet_read(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return mst.io.read_fcs(path, **kwargs)


def _write_fcs(path: Path, data: np.ndarray, channels, markers=None, **keywords) -> Path:
    flowio = pytest.importorskip("flowio")
    with path.open("wb") as fh:
        flowio.create_fcs(
            fh,
            np.asarray(data, dtype=np.float32).ravel().tolist(),
            list(channels),
            opt_channel_names=None if markers is None else list(markers),
            metadata_dict=keywords or None,
        )
    return path


# ------------------------------------------------------------------------------------------
# The zoo
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", _zoo_params())
def test_zoo_file(row, tmp_path):
    path = ZOO / row["file"]
    name = row["file"]
    if row["expected"].startswith("broken") or name in UNREADABLE_VALID:
        hint = UNREADABLE_VALID.get(name, "")
        with pytest.raises(ValueError, match=re.escape(name)) as info:
            _quiet_read(path)
        assert hint in str(info.value)
        if "not an FCS file" not in str(info.value):  # that one is caught before any reader
            assert info.value.__cause__ is not None  # the reader's own exception is chained
        return
    assert row["expected"] == "valid"
    adata = _quiet_read(path)
    if row["n_events"]:
        assert adata.n_obs == int(row["n_events"])
    if row["n_params"]:
        assert adata.n_vars == int(row["n_params"])
    assert adata.X.dtype == np.float32
    assert adata.var_names.is_unique
    assert set(adata.var["type"]) <= {"scatter", "time", "marker", "other"}
    assert list(adata.obs["sample"].unique()) == [path.stem]
    fcs = adata.uns["fcs"]
    assert fcs["file"] == name
    assert int(fcs["tot"]) == adata.n_obs
    if row["readfcs"].startswith("ok") or name in READFCS_WITHOUT_REINDEX:
        assert fcs["reader"] == "readfcs"
    else:
        assert fcs["reader"] == "flowio"
    assert fcs["reader_options"] == NEEDS_OPTION.get(name, "")
    if "spillover" in adata.uns:
        spill = adata.uns["spillover"]
        if isinstance(spill, dict):  # names with "/" cannot be HDF5 keys of a DataFrame
            assert any("/" in c for c in spill["channels"])
            assert spill["matrix"].shape == (len(spill["channels"]),) * 2
        else:
            assert list(spill.index) == list(spill.columns)
    # Every file's AnnData writes (no anndata deprecation either) and reads back.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        adata.write_h5ad(tmp_path / "x.h5ad")
    import anndata as ad

    back = ad.read_h5ad(tmp_path / "x.h5ad")
    np.testing.assert_array_equal(back.X, adata.X)
    assert back.uns["fcs"] == adata.uns["fcs"]


@pytest.mark.skipif(not ZOO.is_dir(), reason="../shared/data is absent")
def test_header_offsets_give_the_right_events():
    # TEXT offsets are 46 bytes off in this file: read with them, "Event Count" is scrambled.
    adata = _quiet_read(ZOO / "beckman_cyan_fcs30.fcs")
    count = adata[:, "Event Count"].X.ravel()
    assert np.all(np.diff(count) == 1)


@pytest.mark.skipif(not ZOO.is_dir(), reason="../shared/data is absent")
def test_swallowed_channel_name_is_recovered():
    # "$P3S\\\\$P4S\\\\" (empty values as doubled delimiters) hides $P6N from the parser.
    adata = _quiet_read(ZOO / "bd_facscalibur_fcs20.fcs")
    assert list(adata.var["channel"]) == [
        "FSC-H", "SSC-H", "FL1-H", "FL2-H", "FL3-H", "FL1-A", "FL4-H", "Time",
    ]  # fmt: skip


@pytest.mark.skipif(not ZOO.is_dir(), reason="../shared/data is absent")
def test_reader_choice_and_errors():
    path = ZOO / "bd_facscantoii_fcs20.fcs"  # no $PnS: readfcs refuses it
    with pytest.raises(ValueError, match=r"bd_facscantoii_fcs20\.fcs.*readfcs"):
        mst.io.read_fcs(path, reader="readfcs")
    assert mst.io.read_fcs(path, reader="flowio").uns["fcs"]["reader"] == "flowio"
    with pytest.raises(ValueError, match="reader"):
        mst.io.read_fcs(path, reader="fcsparser")


# ------------------------------------------------------------------------------------------
# The activation files
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def activation():
    if not ACTIVATION.is_dir():
        pytest.skip("../shared/data is absent")
    return mst.io.read_fcs_folder(
        ACTIVATION,
        panel=ACTIVATION / "Activation-Experiment-Markers.csv",
        metadata=ACTIVATION / "Activation-Experiment-Details.csv",
        progress=False,
    )


def test_activation_folder(activation):
    adata = activation
    assert adata.shape == (100_000, 18)
    assert list(adata.obs["sample"].cat.categories) == ["Activation_1", "Activation_31"]
    markers = ["CD8", "Va2", "CD69", "Hoechst-405", "Hoechst-430", "CD44", "CD4", "CD11c"]
    assert list(adata.var_names[adata.var["type"] == "marker"]) == markers
    assert adata.var.loc["CD69", "channel"] == "7-AAD-A"
    assert adata.var.loc["Qdot 605-A", "type"] == "other"
    first = adata.obs.groupby("sample", observed=True)[["Treatment", "OVA_Conc"]].first()
    assert first.loc["Activation_1"].tolist() == ["Stim-A", 0.0]
    assert first.loc["Activation_31"].tolist() == ["Stim-D", 0.5]
    assert isinstance(adata.obs["Treatment"].dtype, pd.CategoricalDtype)
    assert adata.obs["OVA_Conc"].dtype == np.float64
    files = adata.uns["fcs_files"]
    assert list(files.index) == ["Activation_1", "Activation_31"]
    assert set(files["reader"]) == {"flowio"}  # readfcs refuses files without $PnS
    assert (files["n_events"] == 50_000).all()
    spill = adata.uns["spillover"]
    assert spill.shape == (11, 11)
    assert set(spill.columns) <= set(adata.var["channel"])
    assert set(adata.uns["spillover_by_sample"]) == {"Activation_1", "Activation_31"}


def test_activation_matches_h5ad(activation):
    if not ACTIVATION_H5AD.is_file():
        pytest.skip("../shared/data is absent")
    import anndata as ad

    ref = ad.read_h5ad(ACTIVATION_H5AD, backed="r")
    ref_rows = ref.obs.index[ref.obs["sample"] == "Activation_1"]
    ref_x = np.asarray(ref[ref_rows].to_memory().X)
    events = ref.obs.loc[ref_rows, "event"].to_numpy()
    assert list(ref.var_names) == list(activation.var_names)
    pd.testing.assert_frame_equal(
        activation.var[["channel", "marker", "type"]],
        ref.var[["channel", "marker", "type"]].astype(str),
        check_dtype=False,
    )
    ours = activation[activation.obs["sample"] == "Activation_1"].X
    np.testing.assert_array_equal(ours[events], ref_x)
    np.testing.assert_allclose(
        activation.uns["spillover"].to_numpy(), ref.uns["spillover"]["matrix"]
    )
    ref.file.close()


def test_h5ad_round_trip(activation, tmp_path):
    target = tmp_path / "act.h5ad"
    activation.write_h5ad(target)
    import anndata as ad

    back = ad.read_h5ad(target)
    pd.testing.assert_frame_equal(back.uns["spillover"], activation.uns["spillover"])
    assert back.uns["fcs_files"].shape == activation.uns["fcs_files"].shape
    assert set(back.uns["spillover_by_sample"]) == {"Activation_1", "Activation_31"}
    single = _quiet_read(ACTIVATION / "Activation_1.fcs")
    single.write_h5ad(tmp_path / "one.h5ad")
    one = ad.read_h5ad(tmp_path / "one.h5ad")
    assert one.uns["fcs"]["reader"] == "flowio"
    pd.testing.assert_frame_equal(one.uns["spillover"], single.uns["spillover"])


@pytest.mark.skipif(not ZOO.is_dir(), reason="../shared/data is absent")
def test_spillover_with_slash_names_is_a_dict(tmp_path):
    adata = _quiet_read(ZOO / "bd_facsaria3_index_sorted_fcs30.fcs")
    spill = adata.uns["spillover"]
    assert list(spill["channels"]) == list(adata.var["channel"][6:12])  # "BL 530/30-A", ...
    adata.write_h5ad(tmp_path / "aria.h5ad")
    import anndata as ad

    back = ad.read_h5ad(tmp_path / "aria.h5ad").uns["spillover"]
    assert list(back["channels"]) == list(spill["channels"])
    np.testing.assert_array_equal(back["matrix"], spill["matrix"])


# ------------------------------------------------------------------------------------------
# Small FCS files written here (need no shared data)
# ------------------------------------------------------------------------------------------

SPILL = "2,FL1-A,FL2-A,1,0.1,0.05,1"


@pytest.fixture
def cohort(tmp_path):
    """Three files: same markers on the same detectors, in different channel orders."""
    rng = np.random.default_rng(0)
    files = {}
    specs = {
        "s1": (["FSC-A", "FL1-A", "FL2-A", "Time"], ["", "CD3", "CD4", ""]),
        "s2": (["FL2-A", "Time", "FSC-A", "FL1-A"], ["CD4", "", "", "CD3"]),
        "s10": (["Time", "FL1-A", "FSC-A", "FL2-A"], ["", "CD3", "", "CD4"]),
    }
    for stem, (channels, markers) in specs.items():
        data = rng.normal(size=(20 + len(files), len(channels))).astype(np.float32)
        files[stem] = (data, channels)
        _write_fcs(tmp_path / f"{stem}.fcs", data, channels, markers, spillover=SPILL)
    return tmp_path, files


def test_read_fcs_small(cohort):
    folder, files = cohort
    adata = mst.io.read_fcs(folder / "s2.fcs", sample_key="donor", sample_id="D2")
    data, channels = files["s2"]
    assert list(adata.var_names) == ["CD4", "Time", "FSC-A", "CD3"]
    assert list(adata.var["channel"]) == channels
    assert list(adata.var["type"]) == ["marker", "time", "scatter", "marker"]
    np.testing.assert_array_equal(adata.X, data)
    assert list(adata.obs["donor"].unique()) == ["D2"]
    assert adata.uns["fcs"]["reader"] == "readfcs"
    spill = adata.uns["spillover"]
    assert list(spill.columns) == ["FL1-A", "FL2-A"]
    np.testing.assert_allclose(spill.to_numpy(), [[1, 0.1], [0.05, 1]])


def test_folder_harmonises_channel_order(cohort):
    folder, files = cohort
    meta = pd.DataFrame(
        {"file": ["s1.fcs", "s2.fcs", "s10.fcs"], "group": ["a", "b", "a"], "dose": [0, 1, 2]}
    )
    adata = mst.io.read_fcs_folder(folder, metadata=meta, progress=False)
    assert list(adata.obs["sample"].cat.categories) == ["s1", "s2", "s10"]  # natural order
    assert list(adata.var_names) == ["FSC-A", "CD3", "CD4", "Time"]
    for stem, (data, channels) in files.items():
        sub = adata[adata.obs["sample"] == stem]
        for name, channel in zip(adata.var_names, adata.var["channel"], strict=True):
            np.testing.assert_array_equal(sub[:, name].X.ravel(), data[:, channels.index(channel)])
        assert set(sub.obs["group"]) == {meta.set_index("file").loc[f"{stem}.fcs", "group"]}
    assert isinstance(adata.obs["group"].dtype, pd.CategoricalDtype)
    assert np.issubdtype(adata.obs["dose"].dtype, np.integer)
    assert list(adata.obs["file"].cat.categories) == ["s1.fcs", "s2.fcs", "s10.fcs"]
    assert adata.obs_names.is_unique
    assert list(adata.uns["fcs_files"]["n_events"]) == [20, 21, 22]
    assert list(adata.uns["spillover"].columns) == ["FL1-A", "FL2-A"]


def test_folder_metadata_by_stem_and_key(cohort):
    folder, _ = cohort
    meta = pd.DataFrame({"id": ["s1", "s2"], "label": ["x", "y"]}).set_index("id")
    with pytest.warns(UserWarning, match="no row for 1 file"):
        adata = mst.io.read_fcs_folder(folder, metadata=meta, progress=False)
    assert adata.obs.loc[adata.obs["sample"] == "s10", "label"].isna().all()
    bad = pd.DataFrame({"x": ["nope"], "label": ["y"]})
    with pytest.raises(ValueError, match="metadata_key"):
        mst.io.read_fcs_folder(folder, metadata=bad, progress=False)
    with pytest.raises(KeyError, match="missing_col"):
        mst.io.read_fcs_folder(folder, metadata=meta, metadata_key="missing_col", progress=False)


def test_folder_missing_marker_raise_and_drop(cohort):
    folder, _ = cohort
    rng = np.random.default_rng(1)
    _write_fcs(
        folder / "s3.fcs", rng.normal(size=(5, 3)), ["FSC-A", "FL1-A", "Time"], ["", "CD3", ""]
    )
    with pytest.raises(ValueError, match=r"'CD4' missing from \['s3.fcs'\]"):
        mst.io.read_fcs_folder(folder, progress=False)
    with pytest.warns(UserWarning, match="Dropped 1 marker"):
        adata = mst.io.read_fcs_folder(folder, on_missing="drop", progress=False)
    assert list(adata.var_names) == ["FSC-A", "CD3", "Time"]
    assert adata.n_obs == 20 + 21 + 22 + 5


def test_panel_overrides_pns(cohort):
    folder, _ = cohort
    panel = pd.DataFrame({"Channel": ["FL1-A", "FL2-A", "Time"], "Marker": ["CD3e", None, "NA"]})
    adata = mst.io.read_fcs(folder / "s1.fcs", panel=panel)
    assert list(adata.var_names) == ["FSC-A", "CD3e", "FL2-A", "Time"]
    assert list(adata.var["type"]) == ["scatter", "marker", "other", "time"]
    as_dict = mst.io.read_fcs(folder / "s1.fcs", panel={"FL2-A": "CD4x"})
    assert list(as_dict.var_names) == ["FSC-A", "CD3", "CD4x", "Time"]
    with pytest.warns(UserWarning, match="does not have"):
        mst.io.read_fcs(folder / "s1.fcs", panel={"BV421-A": "CD8"})
    with pytest.raises(ValueError, match="channel and marker columns"):
        mst.io.read_fcs(folder / "s1.fcs", panel=pd.DataFrame({"a": [1], "b": [2], "c": [3]}))


def test_duplicate_names_made_unique(tmp_path):
    path = _write_fcs(
        tmp_path / "dup.fcs", np.ones((4, 3)), ["FL1-A", "FL2-A", "FL3-A"], ["CD3", "CD3", "CD8"]
    )
    with pytest.warns(UserWarning, match="duplicated"):
        adata = mst.io.read_fcs(path)
    assert list(adata.var_names) == ["CD3", "CD3-1", "CD8"]
    assert list(adata.var["marker"]) == ["CD3", "CD3", "CD8"]


def test_broken_small_files(tmp_path):
    good = _write_fcs(tmp_path / "good.fcs", np.ones((50, 3)), ["A", "B", "C"])
    cut = tmp_path / "cut.fcs"
    cut.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(ValueError, match=r"'cut\.fcs'.*past the end of the file"):
        mst.io.read_fcs(cut)
    text = tmp_path / "notes.fcs"
    text.write_text("plain text, not cytometry")
    with pytest.raises(ValueError, match=r"'notes\.fcs'.*not an FCS file"):
        mst.io.read_fcs(text)
    with pytest.raises(ValueError, match=r"cut\.fcs"):
        mst.io.read_fcs_folder([good, cut], progress=False)
    with pytest.raises(FileNotFoundError):
        mst.io.read_fcs(tmp_path / "absent.fcs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"No \.fcs files"):
        mst.io.read_fcs_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="on_missing"):
        mst.io.read_fcs_folder([good], on_missing="keep", progress=False)
