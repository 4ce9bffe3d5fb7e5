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
# Integer DATA that flowio cannot unpack (24-bit values): decoded by maestro_sc.
INT_DECODER = {"cytek_xp3_int24_fcs30.fcs"}
# A $SPILLOVER keyword without coefficients: not stored (with a warning).
EMPTY_SPILL = {"miltenyi_macsquant_spillover_fcs31.fcs"}
# What the ValueError says about each broken zoo file.
BROKEN_PROBLEM = {
    "stratedigm_s1400exi_data_start_discrepancy.fcs": "disagree on where the DATA segment",
    "stratedigm_s1400exi_data_stop_discrepancy.fcs": "disagree on where the DATA segment",
    "partec_cyflow_no_datatype_fcs30.fcs": "$DATATYPE is missing",
    "cytek_aurora_text_only_fcs31.fcs": "runs past the end of the file",
    "corrupted.fcs": "$TOT is missing",
    "header_only.fcs": "before the TEXT segment",
    "truncated.fcs": "runs past the end of the file",
    "fake_large.fcs": "runs past the end of the file",
    "not_fcs.fcs": "not an FCS file",
}


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
    if row["expected"].startswith("broken"):
        with pytest.raises(ValueError, match=re.escape(f"Cannot read FCS file {name!r}")) as info:
            _quiet_read(path)
        assert BROKEN_PROBLEM.get(name, "") in str(info.value)
        if "not an FCS file" not in str(info.value):  # that one is caught before any reader
            assert info.value.__cause__ is not None  # the reader's own exception is chained
        return
    assert row["expected"] == "valid"
    adata = _quiet_read(path)
    # What the manifest read from HEADER/TEXT.
    if row["n_events"]:
        assert adata.n_obs == int(row["n_events"])
    if row["n_params"]:
        assert adata.n_vars == int(row["n_params"])
    fcs = adata.uns["fcs"]
    assert "FCS" + fcs["fcs_version"] == row["fcs_version"]
    assert fcs.get("cyt", "") == row["cyt"]
    assert fcs["datatype"] == row["datatype"]
    assert ("spillover" in adata.uns) == (row["has_spill"] == "True" and name not in EMPTY_SPILL)
    assert adata.X.dtype == np.float32
    assert np.isfinite(adata.X).all()
    if row["datatype"] == "I":
        # Unsigned integers, masked to $PnR rounded up to a power of two.
        assert (adata.X >= 0).all() and (adata.X == np.round(adata.X)).all()
        top = 2.0 ** np.ceil(np.log2(adata.var["PnR"].to_numpy(dtype=float)))
        assert (adata.X < top).all()
    assert adata.var_names.is_unique
    assert set(adata.var["type"]) <= {"scatter", "time", "marker", "other"}
    assert list(adata.obs["sample"].unique()) == [path.stem]
    assert fcs["file"] == name
    assert int(fcs["tot"]) == adata.n_obs
    if row["readfcs"].startswith("ok") or name in READFCS_WITHOUT_REINDEX:
        assert fcs["reader"] == "readfcs"
    else:
        assert fcs["reader"] == "flowio"
    expected_options = [NEEDS_OPTION[name]] if name in NEEDS_OPTION else []
    expected_options += ["int_decoder=maestro_sc"] if name in INT_DECODER else []
    assert fcs["reader_options"] == ", ".join(expected_options)
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


@pytest.mark.skipif(not ZOO.is_dir(), reason="../shared/data is absent")
def test_zoo_int24_values():
    path = ZOO / "cytek_xp3_int24_fcs30.fcs"  # 24-bit big-endian integers
    adata = _quiet_read(path)
    assert adata.shape == (25000, 8)
    assert list(adata.var["channel"]) == ["TIME", "FSC", "SSC", "FL1", "FL2", "FL3", "FSCW", "FSCA"]
    assert list(adata.var["PnR"]) == [262144] + [1024] * 7
    assert adata.uns["fcs"]["reader"] == "flowio"
    assert adata.uns["fcs"]["reader_options"] == "int_decoder=maestro_sc"
    # The first and last events, decoded byte by byte from the DATA segment ($BYTEORD 4,3,2,1).
    text = adata.uns["fcs"]
    assert text["byteord"] == "4,3,2,1"
    raw = path.read_bytes()[4096:604096]  # HEADER and $BEGINDATA/$ENDDATA: 4096-604095
    for row in (0, 1, 2, 24999):
        event = raw[row * 24 : (row + 1) * 24]
        values = [int.from_bytes(event[i : i + 3], "big") for i in range(0, 24, 3)]
        assert adata.X[row].tolist() == values
    time = adata[:, "TIME"].X.ravel()
    # FlowCal's tests of this file: 134.8 s of acquisition at $TIMESTEP 0.1.
    assert (time[-1] - time[0]) * float(text["timestep"]) == pytest.approx(134.8)
    assert np.all(np.diff(time) >= 0)
    assert adata.X[:, 1:].max() <= 1023
    with pytest.raises(ValueError, match=r"cytek_xp3_int24_fcs30\.fcs.*reader='auto'"):
        mst.io.read_fcs(path, reader="readfcs")
    flowio_only = _quiet_read(path, reader="flowio")
    np.testing.assert_array_equal(flowio_only.X, adata.X)


def _int_zoo_files() -> list:
    rows = [
        r
        for r in _manifest()
        if r["expected"] == "valid" and r["datatype"] == "I" and r["file"] not in INT_DECODER
    ]
    if not rows:
        return [pytest.param(None, marks=pytest.mark.skip(reason="../shared/data is absent"))]
    return [pytest.param(r["file"], id=r["file"]) for r in rows]


@pytest.mark.parametrize("name", _int_zoo_files())
def test_int_decoder_matches_flowio(name):
    """maestro_sc's integer decoder gives flowio's values (masking included) for 8/16/32 bits."""
    import flowio

    from maestro_sc.io._fcs_events import _decode_int_data

    path = ZOO / name
    adata = _quiet_read(path)
    options = {"use_header_offsets": True} if name == "beckman_cyan_fcs30.fcs" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fd = flowio.FlowData(str(path), nextdata_offset=0, only_text=True, **options)
    text = fd.text
    if fd.version == "2.0" or options:
        start = fd.header["data_start"]
    else:
        start = int(text["begindata"])
    widths = [int(text[f"p{n}b"]) // 8 for n in range(1, int(text["par"]) + 1)]
    raw = path.read_bytes()[start : start + sum(widths) * int(text["tot"])]
    decoded = _decode_int_data(raw, text)
    np.testing.assert_array_equal(decoded.astype(np.float32), adata.X)
    if name == "beckman_xl_system2_fcs20.fcs":
        # Flag bits above the 10-bit $PnR range are masked off.
        unmasked = np.frombuffer(raw, dtype="<u2").reshape(-1, len(widths))
        assert (unmasked > 1023).any()
        np.testing.assert_array_equal(decoded, unmasked & 1023)


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


# ------------------------------------------------------------------------------------------
# Integer DATA of any width, written byte by byte here (need no shared data)
# ------------------------------------------------------------------------------------------


def _fcs_file(
    path: Path,
    columns,
    bits,
    *,
    byteord="1,2,3,4",
    ranges=None,
    version="3.0",
    tot=None,
    data=None,
    enddata_extra=0,
) -> Path:
    """An integer FCS file made by hand: HEADER, TEXT and DATA (``columns``: one list each)."""
    n_events = len(columns[0])
    order = [int(x) for x in byteord.split(",")]
    if data is None:
        data = bytearray()
        for event in range(n_events):
            for values, width in zip(columns, bits, strict=True):
                n_bytes = width // 8
                little = int(values[event]).to_bytes(n_bytes, "little")
                if order == sorted(order):
                    data += little
                elif order == sorted(order, reverse=True):
                    data += little[::-1]
                else:  # a mixed order: stored byte i is the value's byte order[i]
                    data += bytes(little[o - 1] for o in order)
    keywords = {
        "$BEGINANALYSIS": "0",
        "$ENDANALYSIS": "0",
        "$BEGINSTEXT": "0",
        "$ENDSTEXT": "0",
        "$BYTEORD": byteord,
        "$DATATYPE": "I",
        "$MODE": "L",
        "$NEXTDATA": "0",
        "$PAR": str(len(columns)),
        "$TOT": str(n_events if tot is None else tot),
    }
    for n, width in enumerate(bits, start=1):
        keywords[f"$P{n}N"] = f"CH{n}"
        keywords[f"$P{n}S"] = f"M{n}"
        keywords[f"$P{n}B"] = str(width)
        keywords[f"$P{n}E"] = "0,0"
        keywords[f"$P{n}R"] = str(2**width if ranges is None else ranges[n - 1])
    begin = 0
    while True:  # the offsets are part of the TEXT whose length they depend on
        end = begin + len(data) - 1 + enddata_extra
        keywords["$BEGINDATA"], keywords["$ENDDATA"] = str(begin), str(end)
        text = ("/" + "".join(f"{k}/{v}/" for k, v in keywords.items())).encode("ascii")
        if begin == 58 + len(text):
            break
        begin = 58 + len(text)
    header = f"FCS{version}    " + "".join(
        f"{x:>8}" for x in (58, 58 + len(text) - 1, begin, end, 0, 0)
    )
    path.write_bytes(header.encode("ascii") + text + bytes(data))
    return path


@pytest.mark.parametrize("byteord", ["1,2,3,4", "4,3,2,1", "1,2", "2,1"])
def test_int24_round_trip(tmp_path, byteord):
    rng = np.random.default_rng(7)
    columns = [
        rng.integers(0, 2**24, size=40),  # full 24-bit range
        [0, 1, 255, 256, 65535, 65536, 2**24 - 1] + [12345] * 33,
        rng.integers(0, 1024, size=40),
    ]
    path = _fcs_file(tmp_path / "int24.fcs", columns, [24, 24, 24], byteord=byteord)
    adata = mst.io.read_fcs(path)
    np.testing.assert_array_equal(adata.X, np.array(columns, dtype=np.float32).T)
    assert list(adata.var_names) == ["M1", "M2", "M3"]
    assert adata.uns["fcs"]["reader"] == "flowio"
    assert adata.uns["fcs"]["reader_options"] == "int_decoder=maestro_sc"


def test_int24_values_masked_to_range(tmp_path):
    # $PnR 1024 keeps the low 10 bits; 1000 is rounded up to 1024; 2**24 keeps all 24 bits.
    values = [0, 1023, 1024, 1025, 0xABCDEF, 2**24 - 1]
    path = _fcs_file(tmp_path / "mask.fcs", [values] * 3, [24, 24, 24], ranges=[1024, 1000, 2**24])
    adata = mst.io.read_fcs(path)
    masked = [v & 1023 for v in values]
    np.testing.assert_array_equal(adata.X, np.array([masked, masked, values], np.float32).T)


@pytest.mark.parametrize("byteord", ["1,2,3,4", "4,3,2,1"])
def test_int_mixed_widths_up_to_64_bits(tmp_path, byteord):
    bits = [8, 16, 24, 32, 40, 48, 56, 64]
    columns = [[0, 2**b - 1, 2 ** (b - 1) + 1, 100] for b in bits]
    path = _fcs_file(tmp_path / "mixed.fcs", columns, bits, byteord=byteord)
    adata = mst.io.read_fcs(path)
    expected = np.array(columns, dtype=np.uint64).T.astype(np.float64).astype(np.float32)
    np.testing.assert_array_equal(adata.X, expected)

    from maestro_sc.io._fcs_events import _decode_int_data

    # Before the float32 of AnnData's X: exact up to 53 bits.
    raw = path.read_bytes()
    text = {"par": str(len(bits)), "byteord": byteord, "datatype": "I"}
    text.update({f"p{n}b": str(b) for n, b in enumerate(bits, start=1)})
    text.update({f"p{n}r": str(2**b) for n, b in enumerate(bits, start=1)})
    decoded = _decode_int_data(raw[len(raw) - 4 * sum(bits) // 8 :], text)
    np.testing.assert_array_equal(decoded[:, :6], np.array(columns[:6], dtype=np.float64).T)


@pytest.mark.parametrize("byteord", ["3,4,1,2", "2,1,4,3"])
def test_int32_mixed_byte_order(tmp_path, byteord):
    # readfcs/flowio read an unknown $BYTEORD in the machine's order; it is decoded here.
    columns = [[0x01020304, 7, 2**32 - 1], [0xA0B0C0D0, 65536, 1]]
    path = _fcs_file(tmp_path / "pdp.fcs", columns, [32, 32], byteord=byteord)
    adata = mst.io.read_fcs(path)
    np.testing.assert_array_equal(adata.X, np.array(columns, dtype=np.float64).T.astype("f4"))
    assert adata.uns["fcs"]["reader_options"] == "int_decoder=maestro_sc"
    with pytest.raises(ValueError, match=r"pdp\.fcs.*readfcs cannot unpack its integer data"):
        mst.io.read_fcs(path, reader="readfcs")


def test_int_unsupported_layouts(tmp_path):
    cases = {
        "packed.fcs": ({"bits": [12, 12]}, r"\$P1B=12 bits.*whole bytes"),
        "wide.fcs": ({"bits": [16, 128]}, r"\$P2B=128 bits.*wider than 64 bits"),
        "order.fcs": ({"bits": [24, 24], "byteord": "3,4,1,2"}, r"4-byte words.*24-bit"),
        "noorder.fcs": ({"bits": [24, 24], "byteord": "1,1,2,4"}, r"not a byte order"),
    }
    for name, (spec, message) in cases.items():
        bits = spec["bits"]
        n_bytes = sum(b // 8 for b in bits) if all(b % 8 == 0 for b in bits) else 3
        path = _fcs_file(
            tmp_path / name,
            [[1, 2]] * len(bits),
            bits,
            byteord=spec.get("byteord", "1,2,3,4"),
            ranges=[1024] * len(bits),
            data=bytes(range(2 * n_bytes)),
        )
        with pytest.raises(ValueError, match=re.escape(f"'{name}'") + ".*" + message):
            _quiet_read(path)


def test_int24_offsets_and_counts(tmp_path):
    columns = [[1, 2, 3], [4, 5, 6]]
    # $ENDDATA one byte past the data: read with ignore_offset_error, as for 8/16/32 bits.
    off = _fcs_file(tmp_path / "off.fcs", columns, [24, 24], enddata_extra=1, version="3.1")
    with open(off, "ab") as fh:
        fh.write(b"\0")  # so that $ENDDATA still lies inside the file
    adata = _quiet_read(off)
    np.testing.assert_array_equal(adata.X, np.array(columns, np.float32).T)
    assert adata.uns["fcs"]["reader_options"] == "ignore_offset_error=True, int_decoder=maestro_sc"
    # FCS 2.0 (HEADER offsets only).
    old = _fcs_file(tmp_path / "old.fcs", columns, [24, 24], version="2.0", byteord="4,3,2,1")
    np.testing.assert_array_equal(mst.io.read_fcs(old).X, np.array(columns, np.float32).T)
    # $TOT that disagrees with the DATA segment.
    tot = _fcs_file(tmp_path / "tot.fcs", columns, [24, 24], tot=4)
    with pytest.raises(ValueError, match=r"'tot\.fcs'.*holds 3 events but \$TOT says 4"):
        _quiet_read(tot)
    # A DATA segment cut short.
    cut = tmp_path / "cut.fcs"
    cut.write_bytes(_fcs_file(tmp_path / "full.fcs", columns, [24, 24]).read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"'cut\.fcs'.*runs past the end of the file"):
        _quiet_read(cut)
    # Not a whole number of events.
    odd = _fcs_file(tmp_path / "odd.fcs", columns, [24, 24], data=bytes(16))
    with pytest.raises(ValueError, match=r"'odd\.fcs'.*not a whole number of 6-byte events"):
        _quiet_read(odd)
