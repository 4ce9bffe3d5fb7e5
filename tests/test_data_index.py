"""SampleIndex: the one way model code reads a sample's cells."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from maestro_sc._data import SampleIndex

pytestmark = pytest.mark.filterwarnings("ignore:From 0.4 .update:FutureWarning")

SAMPLES = np.array(["b", "a", "b", "c", "a", "b", "c", "c", "a", "b", "b", "c"])


def cells(sparse_x: bool = False) -> ad.AnnData:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(SAMPLES), 4)).astype(np.float64)
    x[x < -0.5] = 0.0
    obs = pd.DataFrame(
        # Categories in another order than first appearance, plus an unused one.
        {"sample": pd.Categorical(SAMPLES, categories=["c", "a", "b", "z"])},
        index=[f"cell{i}" for i in range(len(SAMPLES))],
    )
    a = ad.AnnData(sparse.csr_matrix(x) if sparse_x else x, obs=obs)
    a.var_names = ["CD3", "CD4", "CD8", "CD19"]
    a.layers["raw"] = x * 10
    return a


def expected(a: ad.AnnData, sample: str, cols=slice(None), layer=None) -> np.ndarray:
    m = a.X if layer is None else a.layers[layer]
    m = m.toarray() if sparse.issparse(m) else m
    return m[SAMPLES == sample][:, cols].astype(np.float32)


def test_sample_order_counts_positions():
    idx = SampleIndex(cells(), "sample")
    assert idx.sample_ids == ["b", "a", "c"]  # first appearance, not category order
    np.testing.assert_array_equal(idx.counts, [5, 3, 4])
    np.testing.assert_array_equal(idx.codes, pd.factorize(SAMPLES)[0])
    for i, s in enumerate(idx.sample_ids):
        pos = idx.positions(i)
        assert (np.diff(pos) > 0).all()
        np.testing.assert_array_equal(pos, np.flatnonzero(SAMPLES == s))
    np.testing.assert_array_equal(idx.first_positions(), [0, 1, 3])
    assert idx.n_samples == 3 and idx.n_markers == 4


@pytest.mark.parametrize("sparse_x", [False, True])
def test_read_dense_and_sparse(sparse_x):
    a = cells(sparse_x)
    idx = SampleIndex(a, "sample")
    for i, s in enumerate(idx.sample_ids):
        got = idx.read(i)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected(a, s))
    means = idx.sample_means()
    np.testing.assert_allclose(means[0], expected(a, "b").mean(0), rtol=1e-6)


def test_layer_and_marker_subset_in_order():
    a = cells()
    idx = SampleIndex(a, "sample", markers=["CD19", "CD3"], layer="raw")
    assert idx.markers == ["CD19", "CD3"]
    np.testing.assert_array_equal(idx.read(1), expected(a, "a", [3, 0], layer="raw"))


@pytest.mark.parametrize("sparse_x", [False, True])
def test_backed_matches_memory(tmp_path, sparse_x):
    a = cells(sparse_x)
    a.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    idx = SampleIndex(backed, "sample", markers=["CD8", "CD4"])
    mem = SampleIndex(a, "sample", markers=["CD8", "CD4"])
    assert idx.sample_ids == mem.sample_ids
    for i in range(idx.n_samples):
        np.testing.assert_array_equal(idx.read(i), mem.read(i))
        np.testing.assert_array_equal(
            idx.read(i, n=2, random_state=5), mem.read(i, n=2, random_state=5)
        )
    assert backed.isbacked


def test_subsampling_is_seeded():
    idx = SampleIndex(cells(), "sample")
    a = idx.subset_positions(0, 3, random_state=1)
    b = idx.subset_positions(0, 3, random_state=1)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 3 and (np.diff(a) > 0).all() and set(a) <= set(idx.positions(0))
    draws = {tuple(idx.subset_positions(0, 3, random_state=s)) for s in range(10)}
    assert len(draws) > 1
    np.testing.assert_array_equal(idx.read(1, n=50), idx.read(1))  # smaller sample: all cells
    rows = idx.subset_positions(2, 2, random_state=np.random.default_rng(0))
    np.testing.assert_array_equal(
        idx.read(2, n=2, random_state=np.random.default_rng(0)), idx.read_rows(rows)
    )


def test_integer_ids_and_mudata():
    a = cells()
    a.obs["num"] = pd.factorize(SAMPLES)[0] + 10
    idx = SampleIndex(a, "num")
    assert idx.sample_ids == ["10", "11", "12"]
    mdata = md.MuData({"prot": a})
    via_mod = SampleIndex(mdata, "sample", mod="prot")
    np.testing.assert_array_equal(via_mod.read(2), SampleIndex(a, "sample").read(2))


def test_bad_input():
    a = cells()
    with pytest.raises(KeyError, match=r"Available columns: \['sample'\]"):
        SampleIndex(a, "donor")
    with pytest.raises(KeyError, match="CD99"):
        SampleIndex(a, "sample", markers=["CD3", "CD99"])
    b = cells()
    b.X[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN/inf.*CD4 \(1\)"):
        SampleIndex(b, "sample")
    c = cells()
    c.obs["sample"] = pd.Series(SAMPLES, dtype=object, index=c.obs_names).where(SAMPLES != "c")
    with pytest.raises(ValueError, match="no sample id"):
        SampleIndex(c, "sample")
    d = cells()
    d.obs["mixed"] = pd.Series([1, "1"] * 6, index=d.obs_names, dtype=object)
    with pytest.raises(ValueError, match="collide"):
        SampleIndex(d, "mixed")
    with pytest.raises(ValueError, match="empty"):
        SampleIndex(cells()[:0].copy(), "sample")
