"""mst.tl.aggregate_samples: the sample-level AnnData (SPEC §2, "Sample-level output")."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest

import maestro_sc as mst

pytestmark = pytest.mark.filterwarnings("ignore:From 0.4 .update:FutureWarning")


def cells() -> ad.AnnData:
    rng = np.random.default_rng(0)
    samples = np.array(["s2", "s1", "s2", "s3", "s1", "s3", "s2", "s3"])
    n = len(samples)
    per_sample = {"s1": ("case", 30, True), "s2": ("ctrl", 41, False), "s3": ("case", 55, True)}
    obs = pd.DataFrame(
        {
            "sample": pd.Categorical(samples),
            "diagnosis": pd.Categorical(
                [per_sample[s][0] for s in samples],
                categories=["ctrl", "case", "unused"],
                ordered=True,
            ),
            "age": np.array([per_sample[s][1] for s in samples], dtype=np.int64),
            "flag": [per_sample[s][2] for s in samples],
            "cell_type": pd.Categorical(rng.choice(["T", "B"], n)),
            "score": rng.normal(size=n),
        },
        index=[f"c{i}" for i in range(n)],
    )
    return ad.AnnData(
        rng.normal(size=(n, 3)).astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=["CD3", "CD4", "CD8"]),
    )


def test_constant_and_varying_columns():
    a = cells()
    s = mst.tl.aggregate_samples(a, "sample")
    assert list(s.obs_names) == ["s2", "s1", "s3"]
    assert {"diagnosis", "age", "flag", "sample", "n_cells"} <= set(s.obs.columns)
    assert set(s.uns["maestro"]["dropped_obs"]) == {"cell_type", "score"}
    assert "cell_type" not in s.obs and "score" not in s.obs
    assert s.obs["age"].tolist() == [41, 30, 55] and s.obs["age"].dtype == np.int64
    assert s.obs["flag"].tolist() == [False, True, True]


def test_categories_kept():
    s = mst.tl.aggregate_samples(cells(), "sample")
    dx = s.obs["diagnosis"]
    assert list(dx.cat.categories) == ["ctrl", "case", "unused"] and dx.cat.ordered
    assert dx.tolist() == ["ctrl", "case", "case"]
    assert list(s.obs["sample"].cat.categories) == ["s2", "s1", "s3"]


def test_n_cells_and_means():
    a = cells()
    s = mst.tl.aggregate_samples(a, "sample")
    assert s.obs["n_cells"].tolist() == [3, 2, 3]
    ref = a.to_df().groupby(a.obs["sample"].astype(str).to_numpy()).mean().loc[list(s.obs_names)]
    np.testing.assert_allclose(s.X, ref.to_numpy(), rtol=1e-6)
    assert list(s.var_names) == ["CD3", "CD4", "CD8"]
    sub = mst.tl.aggregate_samples(a, "sample", markers=["CD8", "CD3"])
    np.testing.assert_allclose(sub.X, ref[["CD8", "CD3"]].to_numpy(), rtol=1e-6)


def test_input_unchanged():
    a = cells()
    x, obs, var = a.X.copy(), a.obs.copy(), a.var.copy()
    mst.tl.aggregate_samples(a, "sample")
    np.testing.assert_array_equal(a.X, x)
    pd.testing.assert_frame_equal(a.obs, obs)
    pd.testing.assert_frame_equal(a.var, var)
    assert not a.uns


def test_mudata_mod_same_result():
    a = cells()
    rna = ad.AnnData(np.zeros((a.n_obs, 2), dtype=np.float32), obs=pd.DataFrame(index=a.obs_names))
    rna.var_names = ["g1", "g2"]
    mdata = md.MuData({"prot": a, "rna": rna})
    via = mst.tl.aggregate_samples(mdata, "sample", mod="prot")
    direct = mst.tl.aggregate_samples(a, "sample")
    np.testing.assert_array_equal(via.X, direct.X)
    pd.testing.assert_frame_equal(via.obs, direct.obs)
    assert via.uns["maestro"]["mod"] == "prot"
    with pytest.raises(ValueError, match="modalities"):
        mst.tl.aggregate_samples(mdata, "sample")


def test_missing_key_and_written(tmp_path):
    a = cells()
    with pytest.raises(KeyError, match="Available columns"):
        mst.tl.aggregate_samples(a, "donor")
    s = mst.tl.aggregate_samples(a, "sample")
    s.write_h5ad(tmp_path / "s.h5ad")
    back = ad.read_h5ad(tmp_path / "s.h5ad")
    pd.testing.assert_frame_equal(back.obs, s.obs)
