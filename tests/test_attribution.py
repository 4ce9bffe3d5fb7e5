"""mst.tl.cell_attribution: per-cell scores from the encoder's attention."""

from __future__ import annotations

import numpy as np
import pytest

import maestro_sc as mst


def test_scores_average_one_per_sample(cohort, train):
    model = train(cohort, max_epochs=1, n_prototypes=0)
    before = cohort.copy()
    out = mst.tl.cell_attribution(cohort, model, "sample", copy=True, progress=False)
    assert "maestro_attribution" not in cohort.obs  # copy=True leaves the input alone
    np.testing.assert_array_equal(before.X, cohort.X)
    scores = out.obs["maestro_attribution"]
    assert (scores >= 0).all()
    means = scores.groupby(out.obs["sample"], observed=True).mean()
    np.testing.assert_allclose(means.to_numpy(), 1.0, rtol=1e-4)
    assert mst.tl.cell_attribution(cohort, model, "sample", progress=False) is None
    np.testing.assert_allclose(cohort.obs["maestro_attribution"], scores, rtol=1e-6)


def test_composition_scores_mark_enriched_cells(cohort, train):
    model = train(cohort, max_epochs=1, n_prototypes=8, readout="pma+proto")
    out = mst.tl.cell_attribution(cohort, model, "sample", copy=True, progress=False)
    auto = out.obs["maestro_attribution"].to_numpy()
    explicit = mst.tl.cell_attribution(
        cohort, model, "sample", method="composition", copy=True, progress=False
    ).obs["maestro_attribution"]
    np.testing.assert_allclose(auto, explicit, rtol=1e-6)
    # Recompute from the model's parts: sum_k a_ik (c_sk - median_s c_sk).
    import torch

    net = model.net
    x = {s: cohort[cohort.obs["sample"] == s].X for s in cohort.obs["sample"].cat.categories}
    comp = {s: net.composition(torch.from_numpy(np.asarray(v))).numpy() for s, v in x.items()}
    median = np.median(np.stack(list(comp.values())), axis=0)
    s0 = cohort.obs["sample"].cat.categories[0]
    a = net.prototype_assignments(torch.from_numpy(np.asarray(x[s0]))).numpy()
    expected = a @ (comp[s0] - median)
    got = out.obs.loc[out.obs["sample"] == s0, "maestro_attribution"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert (auto > 0).any() and (auto < 0).any()
    one = cohort[cohort.obs["sample"] == s0].copy()
    with pytest.raises(ValueError, match="whole cohort"):
        mst.tl.cell_attribution(one, model, "sample", progress=False)


def test_scores_follow_cell_order_not_sample_order(cohort, train):
    model = train(cohort, max_epochs=1)
    shuffled = cohort[np.random.default_rng(0).permutation(cohort.n_obs)].copy()
    a = mst.tl.cell_attribution(cohort, model, "sample", copy=True, progress=False)
    b = mst.tl.cell_attribution(shuffled, model, "sample", copy=True, progress=False)
    np.testing.assert_allclose(
        a.obs.loc[shuffled.obs_names, "maestro_attribution"],
        b.obs["maestro_attribution"],
        rtol=1e-4,
        atol=1e-5,
    )


def test_bad_inputs(cohort, train):
    model = train(cohort, max_epochs=1, n_prototypes=0)
    with pytest.raises(TypeError, match="MaestroModel"):
        mst.tl.cell_attribution(cohort, "model", "sample")
    with pytest.raises(ValueError, match="n_prototypes"):
        mst.tl.cell_attribution(cohort, model, "sample", method="composition")
    with pytest.raises(ValueError, match="method="):
        mst.tl.cell_attribution(cohort, model, "sample", method="gradient")
    with pytest.raises(KeyError, match="m0"):
        mst.tl.cell_attribution(cohort[:, 1:].copy(), model, "sample")
