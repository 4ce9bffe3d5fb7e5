"""mst.tl.cell_attribution: per-cell scores from the encoder's attention."""

from __future__ import annotations

import numpy as np
import pytest

import maestro_sc as mst

from .test_train import train


def test_scores_average_one_per_sample(cohort):
    model = train(cohort, max_epochs=1)
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


def test_scores_follow_cell_order_not_sample_order(cohort):
    model = train(cohort, max_epochs=1)
    shuffled = cohort[np.random.default_rng(0).permutation(cohort.n_obs)].copy()
    a = mst.tl.cell_attribution(cohort, model, "sample", copy=True, progress=False)
    b = mst.tl.cell_attribution(shuffled, model, "sample", copy=True, progress=False)
    np.testing.assert_allclose(
        a.obs.loc[shuffled.obs_names, "maestro_attribution"],
        b.obs["maestro_attribution"],
        rtol=1e-4,
    )


def test_bad_inputs(cohort):
    model = train(cohort, max_epochs=1)
    with pytest.raises(TypeError, match="MaestroModel"):
        mst.tl.cell_attribution(cohort, "model", "sample")
    with pytest.raises(KeyError, match="m0"):
        mst.tl.cell_attribution(cohort[:, 1:].copy(), model, "sample")
