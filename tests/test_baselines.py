"""Baseline sample representations: means, quantiles, k-means, FlowSOM, gated proportions."""

from __future__ import annotations

import importlib.util
import inspect

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import maestro_sc as mst
from maestro_sc._data import SampleIndex
from maestro_sc.tl._baseline_methods import (
    BASELINES,
    DEFAULT_METHODS,
    plan_baseline,
    pooled_subsample,
)


@pytest.fixture
def cells() -> ad.AnnData:
    """Seven samples of 40–120 cells, four markers, three cell types on separated centres."""
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0, 0], [4, 0, 4, 0], [0, 4, 0, 4]], dtype=float)
    types = np.array(["T", "B", "NK"])
    obs, values = [], []
    for s in range(7):
        n = int(rng.integers(40, 120))
        ct = rng.choice(3, n, p=rng.dirichlet([2, 2, 2]))
        values.append(centres[ct] + rng.normal(scale=0.3, size=(n, 4)))
        obs.append(pd.DataFrame({"sample": f"s{s}", "cell_type": types[ct], "group": "ab"[s % 2]}))
    obs = pd.concat(obs, ignore_index=True)
    # Interleave samples so the index must gather rows.
    order = rng.permutation(len(obs))
    obs = obs.iloc[order].reset_index(drop=True)
    obs.index = obs.index.astype(str)
    obs["cell_type"] = pd.Categorical(obs["cell_type"], categories=["T", "B", "NK"])
    X = np.concatenate(values)[order].astype(np.float32)
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=["m1", "m2", "m3", "m4"]))


def expected_means(cells: ad.AnnData) -> pd.DataFrame:
    df = pd.DataFrame(cells.X, columns=cells.var_names)
    df["sample"] = cells.obs["sample"].to_numpy()
    return df.groupby("sample", sort=False).mean()


def test_means_match_groupby(cells):
    before = cells.X.copy()
    sdata = mst.tl.baseline_means(cells, "sample")
    exp = expected_means(cells).loc[sdata.obs_names]
    np.testing.assert_allclose(sdata.obsm["X_means"], exp.to_numpy(), rtol=1e-5)
    assert sdata.obs["group"].tolist() == ["ab"[int(s[1:]) % 2] for s in sdata.obs_names]
    assert list(sdata.uns["baselines"]["X_means"]["features"]) == [
        "m1_mean",
        "m2_mean",
        "m3_mean",
        "m4_mean",
    ]
    np.testing.assert_array_equal(cells.X, before)


def test_quantiles_shape_and_values(cells):
    sdata = mst.tl.baseline_quantiles(cells, "sample", markers=["m1", "m3"])
    rep = sdata.obsm["X_quantiles"]
    assert rep.shape == (7, 2 * 6)
    first = cells[cells.obs["sample"] == sdata.obs_names[0]].X[:, [0, 2]]
    np.testing.assert_allclose(rep[0, :2], first.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(rep[0, 2:4], np.quantile(first, 0.1, axis=0), rtol=1e-5)
    np.testing.assert_allclose(rep[0, 6:8], np.quantile(first, 0.5, axis=0), rtol=1e-5)
    features = list(sdata.uns["baselines"]["X_quantiles"]["features"])
    assert features[:4] == ["m1_mean", "m3_mean", "m1_q10", "m3_q10"]
    with pytest.raises(ValueError, match="quantiles"):
        mst.tl.baseline_quantiles(cells, "sample", quantiles=[0.5, 2])


def test_kmeans_proportions_and_reproducible(cells):
    a = mst.tl.baseline_kmeans(cells, "sample", n_clusters=3, random_state=1)
    b = mst.tl.baseline_kmeans(cells, "sample", n_clusters=3, random_state=1)
    rep = a.obsm["X_kmeans3"]
    assert rep.shape == (7, 3)
    np.testing.assert_allclose(rep.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(rep, b.obsm["X_kmeans3"])
    # Three well-separated populations: k-means proportions are the cell-type proportions,
    # up to the order of the clusters.
    gated = mst.tl.baseline_gated(cells, "sample", "cell_type").obsm["X_gated"]
    assert np.sort(rep, axis=1) == pytest.approx(np.sort(gated, axis=1), abs=1e-6)
    sub = mst.tl.baseline_kmeans(cells, "sample", n_clusters=4, n_fit_cells=50, key_added="X_k")
    assert sub.obsm["X_k"].shape == (7, 4)
    assert sub.uns["baselines"]["X_k"]["n_fit_cells"] == 50
    with pytest.raises(ValueError, match="n_fit_cells"):
        mst.tl.baseline_kmeans(cells, "sample", n_clusters=8, n_fit_cells=4)


def test_kmeans_log_ratio_is_clr_of_standardised_clusters(cells):
    # One marker on a 1000x larger scale: raw k-means splits on it alone, standardised does not.
    scaled = cells.copy()
    scaled.X = scaled.X * np.array([1000, 1, 1, 1], dtype=np.float32)
    clr = mst.tl.baseline_kmeans(scaled, "sample", n_clusters=3, log_ratio=True, random_state=1)
    rep = clr.obsm["X_kmeans_clr3"]
    assert rep.shape == (7, 3)
    np.testing.assert_allclose(rep.sum(axis=1), 0.0, atol=1e-5)
    # back to proportions: exp(clr) is proportional to p + 1/(4k)
    p = np.exp(rep) / np.exp(rep).sum(axis=1, keepdims=True)
    props = p * (1 + 3 / 12) - 1 / 12
    gated = mst.tl.baseline_gated(cells, "sample", "cell_type").obsm["X_gated"]
    assert np.sort(props, axis=1) == pytest.approx(np.sort(gated, axis=1), abs=1e-5)
    sdata = mst.tl.aggregate_samples(cells, "sample")
    mst.tl.add_baselines(sdata, cells, "sample", ["kmeans_clr3"], random_state=1)
    np.testing.assert_allclose(sdata.obsm["X_kmeans_clr3"], rep)


def test_flowsom_proportions(cells):
    pytest.importorskip("flowsom")
    state = np.random.get_state()  # noqa: NPY002
    sdata = mst.tl.baseline_flowsom(
        cells, "sample", n_clusters=3, xdim=3, ydim=3, rlen=5, random_state=0
    )
    rep = sdata.obsm["X_flowsom"]
    assert rep.shape == (7, 3)
    np.testing.assert_allclose(rep.sum(axis=1), 1.0, rtol=1e-6)
    # flowsom seeds numpy's global generator; the baseline restores it.
    assert np.random.get_state()[1].tolist() == state[1].tolist()  # noqa: NPY002
    nodes = mst.tl.baseline_flowsom(
        cells, "sample", n_clusters=3, xdim=3, ydim=3, rlen=5, level="cluster", key_added="X_n"
    )
    assert nodes.obsm["X_n"].shape == (7, 9)
    with pytest.raises(ValueError, match="fewer nodes"):
        mst.tl.baseline_flowsom(cells, "sample", n_clusters=20, xdim=3, ydim=3)


def test_gated_matches_crosstab(cells):
    sdata = mst.tl.baseline_gated(cells, "sample", "cell_type")
    exp = pd.crosstab(cells.obs["sample"], cells.obs["cell_type"], normalize="index")
    exp = exp.loc[sdata.obs_names, ["T", "B", "NK"]]
    np.testing.assert_allclose(sdata.obsm["X_gated"], exp.to_numpy(), rtol=1e-6)
    assert list(sdata.uns["baselines"]["X_gated"]["features"]) == [
        "gated_T",
        "gated_B",
        "gated_NK",
    ]
    with pytest.raises(KeyError, match="cell_type_key"):
        mst.tl.baseline_gated(cells, "sample", "nope")


def test_add_baselines_aligns_by_sample_name(cells, tmp_path):
    sdata = mst.tl.aggregate_samples(cells, "sample")
    sdata = sdata[::-1].copy()
    mst.tl.add_baselines(
        sdata,
        cells,
        "sample",
        methods=["means", "kmeans3", "gated"],
        cell_type_key="cell_type",
        n_fit_cells=200,
    )
    assert set(sdata.obsm.keys()) == {"X_means", "X_kmeans3", "X_gated"}
    exp = expected_means(cells).loc[sdata.obs_names]
    np.testing.assert_allclose(sdata.obsm["X_means"], exp.to_numpy(), rtol=1e-5)
    gated = mst.tl.baseline_gated(cells, "sample", "cell_type")
    np.testing.assert_allclose(
        sdata.obsm["X_gated"], gated[sdata.obs_names].obsm["X_gated"], rtol=1e-6
    )
    info = sdata.uns["baselines"]["X_kmeans3"]
    assert info["method"] == "kmeans"
    assert info["n_clusters"] == 3
    assert info["seconds"] >= 0
    sdata.write_h5ad(tmp_path / "s.h5ad")


def test_add_baselines_checks_before_writing(cells):
    sdata = mst.tl.aggregate_samples(cells, "sample")
    with pytest.raises(ValueError, match="cell_type_key"):
        mst.tl.add_baselines(sdata, cells, "sample", methods=["means", "gated"])
    with pytest.raises(ValueError, match="Unknown baseline"):
        mst.tl.add_baselines(sdata, cells, "sample", methods=["means", "tsne"])
    with pytest.raises(ValueError, match="method_kwargs"):
        mst.tl.add_baselines(sdata, cells, "sample", methods=["means"], method_kwargs={"x": {}})
    with pytest.raises(TypeError, match=r"no parameter\(s\) \['n_clusters'\]"):
        mst.tl.add_baselines(
            sdata, cells, "sample", ["means"], method_kwargs={"means": {"n_clusters": 3}}
        )
    with pytest.raises(ValueError, match="n_clusters"):
        mst.tl.add_baselines(sdata, cells, "sample", methods=["means", "kmeans1"])
    with pytest.raises(KeyError, match="cell_type_key"):
        mst.tl.add_baselines(sdata, cells, "sample", ["means", "gated"], cell_type_key="nope")
    assert len(sdata.obsm) == 0
    other = sdata.copy()
    other.obs_names = [f"{n}_x" for n in other.obs_names]
    with pytest.raises(KeyError, match="not in the cells"):
        mst.tl.add_baselines(other, cells, "sample", methods=["means"])
    with pytest.raises(KeyError, match="sample_key"):
        mst.tl.baseline_means(cells, "donor")


def test_baselines_accept_mudata_and_layer(cells):
    mudata = pytest.importorskip("mudata")
    cells.layers["raw"] = cells.X * 2
    mdata = mudata.MuData({"prot": cells})
    sdata = mst.tl.baseline_means(mdata, "sample", mod="prot", layer="raw")
    exp = expected_means(cells).loc[sdata.obs_names] * 2
    np.testing.assert_allclose(sdata.obsm["X_means"], exp.to_numpy(), rtol=1e-5)
    assert sdata.uns["maestro"]["mod"] == "prot"


def test_pooled_subsample_sizes(cells):
    index = SampleIndex(cells, "sample")
    assert pooled_subsample(index, 100, 0).shape == (100, 4)
    assert pooled_subsample(index, 10**6, 0).shape == (cells.n_obs, 4)
    np.testing.assert_array_equal(pooled_subsample(index, 50, 3), pooled_subsample(index, 50, 3))


def test_registry_names_and_defaults():
    assert set(BASELINES) == {"means", "quantiles", "kmeans", "kmeans_clr", "flowsom", "gated"}
    for name in DEFAULT_METHODS:
        plan_baseline(name)
    k = plan_baseline("kmeans_clr128")
    assert (k.method.name, k.params["n_clusters"], k.key) == ("kmeans_clr", 128, "X_kmeans_clr128")
    assert plan_baseline("kmeans").key == "X_kmeans32"
    assert plan_baseline("flowsom20").key == "X_flowsom20"
    assert plan_baseline("means", key_added="X_m").key == "X_m"
    # The public functions take their defaults from the registry.
    sig = inspect.signature(mst.tl.baseline_kmeans).parameters
    assert sig["n_clusters"].default == BASELINES["kmeans"].defaults["n_clusters"]
    sig = inspect.signature(mst.tl.baseline_flowsom).parameters
    assert sig["n_clusters"].default == BASELINES["flowsom"].defaults["n_clusters"]
    with pytest.raises(ValueError, match=r"Unknown baseline 'tsne'.*'kmeans_clr<k>'"):
        plan_baseline("tsne")


def test_flowsom_missing_package_is_one_clear_error(cells, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "flowsom" else real(name, *a)
    )
    sdata = mst.tl.aggregate_samples(cells, "sample")
    with pytest.raises(ImportError, match="pip install flowsom"):
        mst.tl.add_baselines(sdata, cells, "sample", methods=["means", "flowsom"])
    with pytest.raises(ImportError, match="pip install flowsom"):
        mst.tl.baseline_flowsom(cells, "sample")
    assert len(sdata.obsm) == 0
