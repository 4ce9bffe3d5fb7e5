"""mst.pp: results, in place vs copy, MuData + mod, backed input, and every bad input."""

from __future__ import annotations

import logging

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import maestro_sc as mst

# Raised by the MuData constructor the tests call, not by the library.
pytestmark = pytest.mark.filterwarnings("ignore:From 0.4 .update:FutureWarning")


def cells(n_per_sample=(30, 50, 8), n_markers=4, seed=0) -> ad.AnnData:
    """Raw-scale cells of a few samples, with scatter/time channels and a var['channel']."""
    rng = np.random.default_rng(seed)
    n = sum(n_per_sample)
    names = [f"M{j}" for j in range(n_markers)]
    var = pd.DataFrame(
        {"channel": [f"FL{j + 1}-A" for j in range(n_markers)], "type": "marker"},
        index=names,
    )
    var.loc["FSC-A"] = ["FSC-A", "scatter"]
    var.loc["Time"] = ["Time", "time"]
    x = rng.gamma(2.0, 50.0, (n, n_markers + 2)).astype(np.float32)
    samples = np.repeat([f"s{i}" for i in range(len(n_per_sample))], n_per_sample)
    obs = pd.DataFrame(
        {
            "sample": pd.Categorical(samples),
            "group": np.repeat(["a", "b", "a"][: len(n_per_sample)], n_per_sample),
        },
        index=[f"c{i}" for i in range(n)],
    )
    return ad.AnnData(x, obs=obs, var=var)


def snapshot(adata: ad.AnnData) -> tuple:
    x = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    layers = {k: np.asarray(v).tobytes() for k, v in adata.layers.items()}
    return (x.tobytes(), x.dtype, adata.obs.copy(), adata.var.copy(), sorted(adata.uns), layers)


def assert_unchanged(adata: ad.AnnData, snap: tuple) -> None:
    now = snapshot(adata)
    assert now[0] == snap[0] and now[1] == snap[1]
    pd.testing.assert_frame_equal(now[2], snap[2])
    pd.testing.assert_frame_equal(now[3], snap[3])
    assert now[4] == snap[4] and now[5] == snap[5]


def with_spill(adata: ad.AnnData | None = None) -> pd.DataFrame:
    chans = list((cells() if adata is None else adata).var["channel"][:3])
    s = np.eye(3)
    s[0, 1], s[1, 2], s[2, 0] = 0.2, 0.1, 0.05
    return pd.DataFrame(s, index=chans, columns=chans)


COPY_CALLS = {
    "arcsinh": lambda a, **k: mst.pp.arcsinh(a, 5.0, **k),
    "select_markers": lambda a, **k: mst.pp.select_markers(a, **k),
    "filter_samples": lambda a, **k: mst.pp.filter_samples(a, "sample", 10, **k),
    "subsample": lambda a, **k: mst.pp.subsample(a, "sample", 20, **k),
    "compensate": lambda a, **k: mst.pp.compensate(a, with_spill(), **k),
    "normalize_batches": lambda a, **k: mst.pp.normalize_batches(a, "group", **k),
}


@pytest.mark.parametrize("name", list(COPY_CALLS))
def test_copy_leaves_input_byte_identical(name):
    a = cells()
    snap = snapshot(a)
    out = COPY_CALLS[name](a, copy=True)
    assert isinstance(out, ad.AnnData) and out is not a
    assert_unchanged(a, snap)
    assert COPY_CALLS[name](a) is None
    np.testing.assert_array_equal(a.X, out.X)
    assert list(a.var_names) == list(out.var_names) and list(a.obs_names) == list(out.obs_names)


@pytest.mark.parametrize("name", list(COPY_CALLS))
def test_mudata_mod_writes_into_the_modality(name):
    prot = cells()
    rna = ad.AnnData(
        np.zeros((prot.n_obs, 2), dtype=np.float32), obs=pd.DataFrame(index=prot.obs_names)
    )
    mdata = md.MuData({"prot": prot, "rna": rna})
    expected = COPY_CALLS[name](cells(), copy=True)
    assert COPY_CALLS[name](mdata, mod="prot") is None
    got = mdata.mod["prot"]
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.asarray(got.X), np.asarray(expected.X), rtol=1e-6)
    assert int((mdata.obsmap["prot"] > 0).sum()) == got.n_obs
    copied = COPY_CALLS[name](
        md.MuData({"prot": cells(), "rna": rna.copy()}), mod="prot", copy=True
    )
    assert isinstance(copied, md.MuData) and copied.mod["prot"].shape == expected.shape
    with pytest.raises(KeyError, match="Available modalities"):
        COPY_CALLS[name](mdata, mod="nope")
    with pytest.raises(ValueError, match="modalities"):
        COPY_CALLS[name](mdata)


# arcsinh -------------------------------------------------------------------------------------


def test_arcsinh_values_markers_and_dict():
    a = cells()
    raw = a.X.copy()
    mst.pp.arcsinh(a, cofactor=5.0, markers=["M0", "M1"])
    np.testing.assert_allclose(a.X[:, :2], np.arcsinh(raw[:, :2] / 5), rtol=1e-6)
    np.testing.assert_array_equal(a.X[:, 2:], raw[:, 2:])
    assert a.uns["arcsinh"]["markers"] == ["M0", "M1"]
    b = cells()
    mst.pp.arcsinh(b, cofactor={"M2": 150.0, "M3": 5.0})
    np.testing.assert_allclose(b.X[:, 2], np.arcsinh(raw[:, 2] / 150), rtol=1e-6)
    np.testing.assert_allclose(b.X[:, 3], np.arcsinh(raw[:, 3] / 5), rtol=1e-6)
    np.testing.assert_array_equal(b.X[:, :2], raw[:, :2])
    with pytest.raises(KeyError, match=r"no value for markers \['M0'\]"):
        mst.pp.arcsinh(cells(), cofactor={"M1": 5.0}, markers=["M0", "M1"])
    with pytest.raises(ValueError, match="> 0"):
        mst.pp.arcsinh(cells(), cofactor=0)


def test_arcsinh_twice_warns():
    a = cells()
    mst.pp.arcsinh(a)
    with pytest.warns(UserWarning, match="already arcsinh"):
        mst.pp.arcsinh(a)


def test_arcsinh_integer_sparse_layer_view():
    a = cells()
    ints = a.copy()
    ints.X = np.rint(ints.X).astype(np.int32)
    mst.pp.arcsinh(ints)
    assert ints.X.dtype == np.float32
    np.testing.assert_allclose(ints.X, np.arcsinh(np.rint(a.X) / 5), rtol=1e-6)

    sp = a.copy()
    sp.X = sparse.csr_matrix(np.where(a.X > 100, a.X, 0))
    dense = np.arcsinh(sp.X.toarray() / 5)
    out = mst.pp.arcsinh(sp, markers=["M0", "M3"], copy=True)
    assert sparse.issparse(out.X)
    expect = sp.X.toarray()
    expect[:, [0, 3]] = dense[:, [0, 3]]
    np.testing.assert_allclose(out.X.toarray(), expect, rtol=1e-6)
    csc = a.copy()
    csc.X = sparse.csc_matrix(sp.X)
    mst.pp.arcsinh(csc, markers=["M0", "M3"])
    np.testing.assert_allclose(csc.X.toarray(), expect, rtol=1e-6)

    lay = a.copy()
    lay.layers["raw"] = lay.X.copy()
    mst.pp.arcsinh(lay, layer="raw")
    np.testing.assert_array_equal(lay.X, a.X)
    np.testing.assert_allclose(lay.layers["raw"], np.arcsinh(a.X / 5), rtol=1e-6)

    parent = a.copy()
    view = parent[:20]
    with pytest.warns(UserWarning, match="view"):
        mst.pp.arcsinh(view)
    assert not view.is_view
    np.testing.assert_array_equal(parent.X, a.X)
    np.testing.assert_allclose(view.X, np.arcsinh(a.X[:20] / 5), rtol=1e-6)


def test_backed_in_place_refused_copy_works(tmp_path):
    a = cells()
    a.write_h5ad(tmp_path / "c.h5ad")
    backed = ad.read_h5ad(tmp_path / "c.h5ad", backed="r")
    with pytest.raises(ValueError, match="copy=True"):
        mst.pp.arcsinh(backed)
    out = mst.pp.arcsinh(backed, copy=True)
    np.testing.assert_allclose(out.X, np.arcsinh(a.X / 5), rtol=1e-6)
    small = mst.pp.subsample(backed, "sample", 10, copy=True, random_state=1)
    assert not small.isbacked and small.n_obs == 28
    mem = mst.pp.subsample(a, "sample", 10, copy=True, random_state=1)
    np.testing.assert_array_equal(small.X, mem.X)
    kept = mst.pp.filter_samples(backed, "sample", 10, copy=True)
    assert list(kept.obs["sample"].cat.categories) == ["s0", "s1"]


# bad input -----------------------------------------------------------------------------------


def bad_inputs() -> dict[str, tuple[ad.AnnData, type, str]]:
    nan = cells()
    nan.X[3, 1] = np.nan
    nan.X[5, 1] = np.inf
    nan.X[7, 2] = np.nan
    text = cells()
    text.X = text.X.astype(str).astype(object)
    dup = cells()
    dup.var_names = ["M0", "M0", "M2", "M3", "FSC-A", "Time"]
    empty = cells()[:0].copy()
    return {
        "nan": (nan, ValueError, r"3 NaN/inf values.*M1 \(2\).*M2 \(1\)"),
        "text": (text, TypeError, "not numeric"),
        "dup": (dup, ValueError, r"duplicated: \['M0'\]"),
        "empty": (empty, ValueError, "empty"),
    }


VALUE_CALLS = {
    "arcsinh": lambda a: mst.pp.arcsinh(a),
    "normalize_batches": lambda a: mst.pp.normalize_batches(a, "group"),
    "compensate": lambda a: mst.pp.compensate(a, with_spill(cells())),
}


@pytest.mark.parametrize("case", ["nan", "text", "dup", "empty"])
@pytest.mark.parametrize("name", list(VALUE_CALLS))
def test_bad_values(name, case):
    a, err, msg = bad_inputs()[case]
    snap = a.X.copy()
    with pytest.raises(err, match=msg):
        VALUE_CALLS[name](a)
    np.testing.assert_array_equal(a.X, snap)


SAMPLE_CALLS = {
    "filter_samples": lambda a, key: mst.pp.filter_samples(a, key, 5),
    "subsample": lambda a, key: mst.pp.subsample(a, key, 5),
    "normalize_batches": lambda a, key: mst.pp.normalize_batches(a, key),
}


@pytest.mark.parametrize("name", list(SAMPLE_CALLS))
def test_missing_key_lists_obs_columns(name):
    a = cells()
    with pytest.raises(KeyError, match=r"Available columns: \['sample', 'group'\]"):
        SAMPLE_CALLS[name](a, "donor")
    a, err, msg = bad_inputs()["dup"]
    with pytest.raises(err, match=msg):
        SAMPLE_CALLS[name](a, "sample")
    a, err, msg = bad_inputs()["empty"]
    with pytest.raises(err, match=msg):
        SAMPLE_CALLS[name](a, "sample")


@pytest.mark.parametrize(
    "call",
    [
        lambda a: mst.pp.arcsinh(a, markers=["M0", "CD99"]),
        lambda a: mst.pp.select_markers(a, ["M0", "CD99"]),
        lambda a: mst.pp.normalize_batches(a, "group", markers=["CD99"]),
    ],
)
def test_unknown_markers_are_named(call):
    a = cells()
    snap = snapshot(a)
    with pytest.raises(KeyError, match="CD99"):
        call(a)
    assert_unchanged(a, snap)


def test_anndata_with_mod_is_refused():
    with pytest.raises(TypeError, match="only for MuData"):
        mst.pp.arcsinh(cells(), mod="prot")


# select_markers ------------------------------------------------------------------------------


def test_select_markers_ways():
    a = cells()
    mst.pp.select_markers(a)
    assert list(a.var_names) == ["M0", "M1", "M2", "M3"]
    b = mst.pp.select_markers(cells(), ["M3", "M1"], copy=True)
    assert list(b.var_names) == ["M3", "M1"]
    np.testing.assert_array_equal(b.X[:, 0], cells().X[:, 3])
    c = mst.pp.select_markers(cells(), var_column="type", value="marker", copy=True)
    assert list(c.var_names) == ["M0", "M1", "M2", "M3"]
    d = cells()
    d.var["use"] = [True, False, True, False, False, False]
    assert list(mst.pp.select_markers(d, var_column="use", copy=True).var_names) == ["M0", "M2"]
    with pytest.raises(ValueError, match="value="):
        mst.pp.select_markers(d, var_column="type")
    with pytest.raises(KeyError, match="Available"):
        mst.pp.select_markers(d, var_column="nope")
    with pytest.raises(ValueError, match="No marker left"):
        mst.pp.select_markers(d, exclude_patterns=("M", "FSC", "Time"))
    # Patterns also match var["channel"] (e.g. a scatter channel renamed to a marker-like name).
    e = cells()
    e.var_names = ["M0", "M1", "M2", "M3", "X1", "X2"]
    assert list(mst.pp.select_markers(e, copy=True).var_names) == ["M0", "M1", "M2", "M3"]


# filter_samples / subsample ------------------------------------------------------------------


def test_filter_samples(caplog):
    a = cells()
    with caplog.at_level(logging.WARNING, logger="maestro_sc"):
        mst.pp.filter_samples(a, "sample", min_cells=10)
    assert "s2" in caplog.text and "8" in caplog.text
    assert a.n_obs == 80
    assert list(a.obs["sample"].cat.categories) == ["s0", "s1"]
    b = cells()
    mst.pp.filter_samples(b, "sample", min_cells=8)
    assert b.n_obs == 88
    with pytest.raises(ValueError, match=r"zero cells.*'s0': 30.*'s1': 50.*'s2': 8"):
        mst.pp.filter_samples(cells(), "sample", min_cells=100)
    with pytest.raises(ValueError, match="min_cells"):
        mst.pp.filter_samples(cells(), "sample", min_cells=-1)


def test_filter_samples_on_view():
    parent = cells()
    view = parent[parent.obs["group"] == "a"]
    with pytest.warns(UserWarning, match="view"):
        mst.pp.filter_samples(view, "sample", 10)
    assert view.n_obs == 30 and parent.n_obs == 88


def test_subsample():
    a = cells()
    out = mst.pp.subsample(a, "sample", 20, random_state=3, copy=True)
    assert out.obs["sample"].value_counts().to_dict() == {"s0": 20, "s1": 20, "s2": 8}
    pos = a.obs_names.get_indexer(out.obs_names)
    assert (np.diff(pos) > 0).all()
    again = mst.pp.subsample(a, "sample", 20, random_state=3, copy=True)
    other = mst.pp.subsample(a, "sample", 20, random_state=4, copy=True)
    assert list(again.obs_names) == list(out.obs_names)
    assert list(other.obs_names) != list(out.obs_names)
    with pytest.raises(ValueError, match="n_cells"):
        mst.pp.subsample(a, "sample", 0)


def test_mudata_global_sample_key():
    prot = cells()
    mdata = md.MuData({"prot": prot})
    mdata.obs["donor"] = prot.obs["sample"].astype(str).to_numpy()
    mst.pp.filter_samples(mdata, "donor", 10)
    assert mdata.mod["prot"].n_obs == 80 and mdata.n_obs == 80


# compensate ----------------------------------------------------------------------------------


def test_compensate_dataframe_and_channel_matching():
    a = cells()
    spill = with_spill(a)
    ref = a.X[:, :3].astype(np.float64) @ np.linalg.inv(spill.to_numpy())
    out = mst.pp.compensate(a, spill, copy=True)
    np.testing.assert_allclose(out.X[:, :3], ref, rtol=1e-5)
    np.testing.assert_array_equal(out.X[:, 3:], a.X[:, 3:])
    assert out.uns["compensation"]["channels"] == list(spill.columns)
    assert "original" not in out.layers
    with pytest.warns(UserWarning, match="already compensated"):
        mst.pp.compensate(out, spill)


def test_compensate_from_uns_formats():
    a = cells()
    spill = with_spill(a)
    ref = mst.pp.compensate(a, spill, copy=True).X
    b = cells()
    b.uns["spillover"] = {
        "channels": np.array(spill.columns, dtype=object),
        "matrix": spill.to_numpy(),
    }
    mst.pp.compensate(b)
    np.testing.assert_allclose(b.X, ref, rtol=1e-6)
    c = cells()
    fcs = ",".join(["3", *spill.columns, *(f"{v:.17g}" for v in spill.to_numpy().ravel())])
    c.uns["meta"] = {"$SPILL": fcs}
    mst.pp.compensate(c)
    np.testing.assert_allclose(c.X, ref, rtol=1e-6)
    assert c.uns["compensation"]["source"] == "uns['meta']['$SPILL']"
    d = cells()
    d.X = np.rint(d.X).astype(np.int64)
    d.uns["spill"] = spill
    mst.pp.compensate(d)
    assert d.X.dtype == np.float32


def test_compensate_uses_pytometry_when_it_runs(monkeypatch):
    pytest.importorskip("pytometry")
    a = cells()
    spill = with_spill(a)
    fallback = mst.pp.compensate(a, spill, copy=True).X
    from maestro_sc.pp import _compensate

    calls = []
    real = _compensate._pytometry_compensate

    def spy(values, s):
        calls.append(1)
        return real(values, s)

    monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    monkeypatch.setattr(_compensate, "_pytometry_compensate", spy)
    out = mst.pp.compensate(a, spill, copy=True)
    assert calls and "original" not in out.layers
    np.testing.assert_allclose(out.X, fallback, rtol=1e-5)
    assert _compensate._pytometry_compensate(a.X[:, :3].astype(np.float64), spill) is not None


def test_compensate_errors():
    a = cells()
    snap = snapshot(a)
    with pytest.raises(ValueError, match="No spillover matrix"):
        mst.pp.compensate(a)
    spill = with_spill(a).rename(columns={"FL1-A": "FL9-A"})
    with pytest.raises(ValueError, match=r"\['FL9-A'\] are not in the data"):
        mst.pp.compensate(a, spill)
    with pytest.raises(ValueError, match="singular"):
        mst.pp.compensate(a, pd.DataFrame(np.ones((3, 3)), columns=list(a.var["channel"][:3])))
    with pytest.raises(TypeError, match="DataFrame"):
        mst.pp.compensate(a, 3)
    assert_unchanged(a, snap)


# harmonize_panels / normalize_batches --------------------------------------------------------


def test_harmonize_panels():
    a = cells()
    b = cells(n_per_sample=(10, 12), seed=1)
    b = b[:, ["M3", "M1", "M0", "FSC-A"]].copy()
    b.var_names = ["M3", "M1", "M0", "CD99"]
    with pytest.warns(
        UserWarning, match=r"dropped markers.*a: \['M2', 'FSC-A', 'Time'\].*b: \['CD99'\]"
    ):
        out = mst.pp.harmonize_panels({"a": a, "b": b}, batch_key="cohort")
    assert list(out.var_names) == ["M0", "M1", "M3"]
    assert out.n_obs == a.n_obs + b.n_obs
    assert list(out.obs["cohort"].cat.categories) == ["a", "b"]
    assert out.obs_names.is_unique
    np.testing.assert_array_equal(out.X[a.n_obs :, 0], b[:, "M0"].X.ravel())
    assert out.uns["harmonize_panels"]["dropped"]["b"] == ["CD99"]
    same = mst.pp.harmonize_panels([cells(), cells(seed=2)])
    assert list(same.obs["batch"].cat.categories) == ["0", "1"] and same.n_vars == 6
    other = cells()
    other.var_names = [f"Z{j}" for j in range(6)]
    with pytest.raises(ValueError, match="share no marker"):
        mst.pp.harmonize_panels([cells(), other])
    with pytest.raises(ValueError, match="intersection"):
        mst.pp.harmonize_panels([cells(), cells()], how="union")
    with pytest.raises(ValueError, match=r"Cohort '1'.*duplicated"):
        mst.pp.harmonize_panels([cells(), bad_inputs()["dup"][0]])
    with pytest.warns(UserWarning, match="already exists"):
        mst.pp.harmonize_panels([cells(), cells()], batch_key="group")
    mdatas = [md.MuData({"prot": cells()}), md.MuData({"prot": cells(seed=3)})]
    assert mst.pp.harmonize_panels(mdatas, mod="prot").n_obs == 176


@pytest.mark.parametrize("method", ["center", "standardize"])
def test_normalize_batches(method):
    a = cells()
    mst.pp.arcsinh(a)
    a.X[a.obs["group"] == "b", :] += 0.7
    before = a.X.copy()
    out = mst.pp.normalize_batches(a, "group", method=method, markers=["M0", "M1"], copy=True)
    g = a.obs["group"].to_numpy()
    for grp in ("a", "b"):
        np.testing.assert_allclose(out.X[g == grp, :2].mean(0), before[:, :2].mean(0), atol=1e-5)
    if method == "standardize":
        np.testing.assert_allclose(out.X[g == "b", :2].std(0), before[:, :2].std(0), rtol=1e-4)
    np.testing.assert_array_equal(out.X[:, 2:], before[:, 2:])
    assert out.uns["normalize_batches"]["batches"] == ["a", "b"]
    with pytest.raises(ValueError, match="method"):
        mst.pp.normalize_batches(a, "group", method="combat")


def test_normalize_batches_integer_sparse():
    a = cells()
    a.X = sparse.csr_matrix(np.rint(a.X).astype(np.int32))
    mst.pp.normalize_batches(a, "group")
    assert isinstance(a.X, np.ndarray) and a.X.dtype == np.float32
