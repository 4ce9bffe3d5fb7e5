"""Evaluation tools: linear probe, cell-type retrieval, nearest-neighbour contingency."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import maestro_sc as mst
from maestro_sc.tl._probe import _cv_splits
from maestro_sc.tl._retrieval import fit_softmax_layer


def sample_adata(labels, reps: dict[str, np.ndarray], **obs_cols) -> ad.AnnData:
    n = len(labels)
    obs = pd.DataFrame(
        {"label": pd.Categorical(labels), **obs_cols}, index=[f"s{i}" for i in range(n)]
    )
    sdata = ad.AnnData(np.zeros((n, 1), dtype=np.float32), obs=obs)
    for key, rep in reps.items():
        sdata.obsm[key] = rep
    return sdata


def one_hot(labels) -> np.ndarray:
    codes, _ = pd.factorize(np.asarray(labels))
    return np.eye(codes.max() + 1)[codes]


# --------------------------------------------------------------------------------- linear probe


@pytest.mark.parametrize("n_classes", [2, 3])
def test_probe_perfect_representation(n_classes):
    rng = np.random.default_rng(0)
    labels = np.array([f"c{i % n_classes}" for i in range(30)])
    rep = one_hot(labels) * 5 + rng.normal(scale=0.01, size=(30, n_classes))
    sdata = sample_adata(labels, {"X_perfect": rep})
    res = mst.tl.linear_probe(sdata, "label", use_rep="X_perfect", n_repeats=2, inplace=False)
    table = res.set_index("metric")
    assert table.loc["accuracy", "mean"] == 1.0
    assert table.loc["auroc", "mean"] == 1.0
    assert table.loc["f1", "mean"] == 1.0
    assert table.loc["accuracy", "n_folds"] == 10
    assert {f"f1_c{k}" for k in range(n_classes)} <= set(table.index)
    assert list(res.columns) == ["metric", "mean", "std", "n_folds", "chance"]
    assert table.loc["accuracy", "chance"] == pytest.approx(1 / n_classes)
    assert res.attrs["task"] == "classification"


def test_probe_random_representation_is_near_chance():
    rng = np.random.default_rng(1)
    labels = np.array([f"c{i % 3}" for i in range(300)])
    sdata = sample_adata(labels, {"X_rand": rng.normal(size=(300, 4))})
    table = mst.tl.linear_probe(
        sdata, "label", use_rep="X_rand", n_repeats=2, inplace=False
    ).set_index("metric")
    assert abs(table.loc["accuracy", "mean"] - 1 / 3) < 0.1
    assert abs(table.loc["auroc", "mean"] - 0.5) < 0.1
    assert table.loc["f1", "chance"] == pytest.approx(1 / 3)


def test_probe_chance_is_majority_class():
    rng = np.random.default_rng(2)
    labels = np.array(["a"] * 30 + ["b"] * 10)
    sdata = sample_adata(labels, {"X_rand": rng.normal(size=(40, 3))})
    table = mst.tl.linear_probe(
        sdata, "label", use_rep="X_rand", n_repeats=1, inplace=False
    ).set_index("metric")
    assert table.loc["accuracy", "chance"] == pytest.approx(0.75)
    assert table.loc["auroc", "chance"] == 0.5
    assert table.loc["f1_b", "chance"] == pytest.approx(0.25)


def test_probe_regression_linear_target():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 5))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 10
    sdata = sample_adata(["a"] * 60, {"X_lin": X}, age=y)
    res = mst.tl.linear_probe(sdata, "age", use_rep="X_lin", n_repeats=2, alpha=1e-6, inplace=False)
    table = res.set_index("metric")
    assert res.attrs["task"] == "regression"
    assert list(table.index) == ["mae", "r2"]
    # MAE per fold; R² per repeat on the pooled out-of-fold predictions.
    assert table.loc["mae", "n_folds"] == 10
    assert table.loc["r2", "n_folds"] == 2
    assert table.loc["r2", "mean"] > 0.999
    assert table.loc["mae", "mean"] < 0.01
    # Chance is the training-mean predictor: far worse, R² near zero.
    assert table.loc["mae", "chance"] > 1.0
    assert table.loc["r2", "chance"] < 0.05


def test_probe_task_override_and_auto():
    rng = np.random.default_rng(4)
    codes = np.tile([0, 1], 15)
    sdata = sample_adata(codes.astype(str), {"X": rng.normal(size=(30, 2))}, code=codes)
    assert (
        mst.tl.linear_probe(sdata, "code", use_rep="X", n_repeats=1, inplace=False).attrs["task"]
        == "regression"
    )
    res = mst.tl.linear_probe(
        sdata, "code", use_rep="X", n_repeats=1, task="classification", inplace=False
    )
    assert res.attrs["task"] == "classification"
    assert res.attrs["classes"] == ["0", "1"]


def test_grouped_cv_keeps_groups_together():
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(12), 2).astype(str)
    y = np.tile([0, 1], 12)
    for task in ("classification", "regression"):
        splits = _cv_splits(y, task, groups, 4, 3, 0)
        assert len(splits) == 12
        for _, _, train, test in splits:
            assert not set(groups[train]) & set(groups[test])
            assert len(train) + len(test) == len(y)
    sdata = sample_adata(
        np.where(y == 0, "ref", "stim"), {"X": rng.normal(size=(24, 3))}, patient=groups
    )
    res = mst.tl.linear_probe(
        sdata, "label", use_rep="X", groups="patient", n_repeats=2, inplace=False
    )
    assert res.attrs["groups"] == "patient"
    assert res.set_index("metric").loc["accuracy", "n_folds"] == 10


def test_grouped_probe_splits_paired_signal():
    """With pairs kept in one fold, a label signal on top of a per-patient offset is found."""
    rng = np.random.default_rng(6)
    n_pat = 10
    patient = np.repeat([f"p{i}" for i in range(n_pat)], 2)
    labels = np.tile(["ref", "stim"], n_pat)
    signal = (labels == "stim").astype(float)[:, None]
    rep = np.repeat(rng.normal(size=(n_pat, 3)), 2, axis=0) + signal * 3
    sdata = sample_adata(labels, {"X": rep}, patient=patient)
    table = mst.tl.linear_probe(
        sdata, "label", use_rep="X", groups="patient", n_splits=5, n_repeats=2, inplace=False
    ).set_index("metric")
    assert table.loc["accuracy", "mean"] > 0.8


def test_probe_caps_splits_by_smallest_class():
    rng = np.random.default_rng(7)
    labels = np.array(["a"] * 20 + ["b"] * 3)
    sdata = sample_adata(labels, {"X": rng.normal(size=(23, 2))})
    with pytest.warns(UserWarning, match="capped to 3"):
        res = mst.tl.linear_probe(sdata, "label", use_rep="X", n_repeats=2, inplace=False)
    assert res.attrs["n_splits"] == 3
    assert res.set_index("metric").loc["accuracy", "n_folds"] == 6


def test_probe_rejects_singleton_class_and_bad_keys():
    rng = np.random.default_rng(8)
    labels = np.array(["a"] * 10 + ["b"] * 10 + ["c"])
    sdata = sample_adata(labels, {"X": rng.normal(size=(21, 2))})
    with pytest.raises(ValueError, match="only 1 samples"):
        mst.tl.linear_probe(sdata, "label", use_rep="X")
    with pytest.raises(KeyError, match="X_missing"):
        mst.tl.linear_probe(sdata, "label", use_rep="X_missing")
    with pytest.raises(KeyError, match="Available columns"):
        mst.tl.linear_probe(sdata, "nope", use_rep="X")
    assert not any(k.startswith("probe_") for k in sdata.uns)


def test_probe_exclude_mask_query_and_names():
    rng = np.random.default_rng(9)
    labels = np.array(["a", "b"] * 10 + ["ctrl"])
    kind = np.array(["sample"] * 20 + ["control"])
    sdata = sample_adata(labels, {"X": rng.normal(size=(21, 2))}, kind=kind)
    by_query = mst.tl.linear_probe(
        sdata, "label", use_rep="X", exclude="kind == 'control'", n_repeats=1, inplace=False
    )
    by_mask = mst.tl.linear_probe(
        sdata, "label", use_rep="X", exclude=kind == "control", n_repeats=1, inplace=False
    )
    by_name = mst.tl.linear_probe(
        sdata, "label", use_rep="X", exclude=["s20"], n_repeats=1, inplace=False
    )
    assert by_query.attrs["classes"] == ["a", "b"]
    assert by_query.attrs["n_samples"] == 20
    pd.testing.assert_frame_equal(by_query, by_mask)
    pd.testing.assert_frame_equal(by_query, by_name)
    with pytest.raises(ValueError, match="valid query"):
        mst.tl.linear_probe(sdata, "label", use_rep="X", exclude="kind ==")


def test_probe_folds_uns_and_h5ad_roundtrip(tmp_path):
    rng = np.random.default_rng(10)
    labels = np.array(["a", "b"] * 12)
    sdata = sample_adata(labels, {"X_r": rng.normal(size=(24, 2))})
    res = mst.tl.linear_probe(sdata, "label", use_rep="X_r", n_splits=3, n_repeats=2, inplace=False)
    assert "probe_label_X_r" not in sdata.uns  # inplace=False leaves sdata alone
    folds = pd.DataFrame(res.attrs["folds"])
    assert set(folds.columns) == {"repeat", "fold", "metric", "value"}
    acc = folds[folds.metric == "accuracy"]["value"]
    assert len(acc) == 6
    assert acc.mean() == pytest.approx(res.set_index("metric").loc["accuracy", "mean"])
    # Results of several representations concatenate (attrs hold no arrays).
    both = pd.concat([res.assign(method="a"), res.assign(method="b")])
    assert len(both) == 2 * len(res)
    # inplace=True stores the same result and returns None.
    assert mst.tl.linear_probe(sdata, "label", use_rep="X_r", n_splits=3, n_repeats=2) is None
    stored = mst.get.result_df(sdata, "probe_label_X_r")
    pd.testing.assert_frame_equal(stored, res)
    assert stored.attrs["folds"] == res.attrs["folds"]
    assert stored.attrs["classes"] == ["a", "b"] and stored.attrs["task"] == "classification"
    sdata.write_h5ad(tmp_path / "s.h5ad")
    back = ad.read_h5ad(tmp_path / "s.h5ad")
    rebuilt = mst.get.result_df(back, "probe_label_X_r")
    pd.testing.assert_frame_equal(rebuilt, res, check_dtype=False)
    assert rebuilt.attrs["folds"] == res.attrs["folds"]
    with pytest.warns(UserWarning, match="overwritten"):
        mst.tl.linear_probe(sdata, "label", use_rep="X_r", n_splits=3, n_repeats=1)


# ------------------------------------------------------------------------ cell-type retrieval


def cells_with_types(n_samples: int, seed: int = 0, int_ids: bool = False):
    """Cells whose cell-type proportions vary between samples; returns (cells, proportions)."""
    rng = np.random.default_rng(seed)
    types = np.array(["T", "B", "NK", "Mono"])
    props = rng.dirichlet(np.full(len(types), 2.0), size=n_samples)
    obs, values = [], []
    for s in range(n_samples):
        n = int(rng.integers(200, 400))
        ct = rng.choice(len(types), n, p=props[s])
        obs.append(pd.DataFrame({"sample": s if int_ids else f"s{s}", "cell_type": types[ct]}))
        values.append(rng.normal(size=(n, 3)))
    obs = pd.concat(obs, ignore_index=True)
    obs.index = obs.index.astype(str)
    cells = ad.AnnData(np.concatenate(values).astype(np.float32), obs=obs)
    true = pd.crosstab(obs["sample"].astype(str), obs["cell_type"], normalize="index")
    return cells, true


def test_retrieval_true_proportions_beat_mean_predictor():
    cells, true = cells_with_types(40)
    names = [f"s{s}" for s in range(40)]
    rng = np.random.default_rng(1)
    sdata = ad.AnnData(np.zeros((40, 1), dtype=np.float32), obs=pd.DataFrame(index=names))
    sdata.obsm["X_true"] = true.loc[names].to_numpy()
    sdata.obsm["X_rand"] = rng.normal(size=(40, 4))
    res = mst.tl.celltype_retrieval(
        sdata, cells, "sample", "cell_type", use_rep="X_true", inplace=False
    )
    # Text cell types come in sorted order (categories keep theirs).
    assert list(res.index) == ["B", "Mono", "NK", "T", "(mean)"]
    assert list(res.columns) == ["mae", "mae_mean_predictor", "relative_mae", "mean_proportion"]
    assert res.loc["(mean)", "relative_mae"] < 0.4
    assert res.loc["(mean)", "mae"] == pytest.approx(res["mae"].iloc[:-1].mean())
    rand = mst.tl.celltype_retrieval(
        sdata, cells, "sample", "cell_type", use_rep="X_rand", inplace=False
    )
    assert rand.loc["(mean)", "relative_mae"] > 0.85
    assert rand.loc["(mean)", "mae_mean_predictor"] == pytest.approx(
        res.loc["(mean)", "mae_mean_predictor"]
    )
    assert "retrieval_cell_type_X_true" not in sdata.uns
    assert mst.tl.celltype_retrieval(sdata, cells, "sample", "cell_type", use_rep="X_true") is None
    stored = mst.get.result_df(sdata, "retrieval_cell_type_X_true")
    pd.testing.assert_frame_equal(stored, res)
    assert stored.attrs == res.attrs


def test_retrieval_matches_integer_sample_ids_and_warns_on_missing():
    cells, true = cells_with_types(12, seed=2, int_ids=True)
    names = [str(s) for s in range(12)] + ["extra"]
    sdata = ad.AnnData(np.zeros((13, 1), dtype=np.float32), obs=pd.DataFrame(index=names))
    sdata.obsm["X"] = np.vstack([true.loc[names[:-1]].to_numpy(), np.zeros((1, 4))])
    with pytest.warns(UserWarning, match="no cells"):
        res = mst.tl.celltype_retrieval(
            sdata, cells, "sample", "cell_type", use_rep="X", inplace=False
        )
    assert res.attrs["n_samples"] == 12
    with pytest.raises(KeyError, match="cell_type_key"):
        mst.tl.celltype_retrieval(sdata, cells, "sample", "nope", use_rep="X")


def test_softmax_layer_recovers_a_softmax_model():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3))
    W = rng.normal(size=(3, 4))
    logits = X @ W
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    W_hat, b_hat = fit_softmax_layer(X, P, l2=1e-8)
    fitted = X @ W_hat + b_hat
    Q = np.exp(fitted) / np.exp(fitted).sum(axis=1, keepdims=True)
    assert np.abs(Q - P).max() < 1e-3


# -------------------------------------------------------------------- nearest-neighbour table


def test_nn_contingency_separated_clusters_agree():
    rng = np.random.default_rng(4)
    labels = np.array(["x"] * 10 + ["y"] * 10)
    rep = np.vstack([rng.normal(size=(10, 2)), rng.normal(size=(10, 2)) + 100])
    sdata = sample_adata(labels, {"X_sep": rep})
    res = mst.tl.nn_contingency(sdata, "label", use_rep="X_sep", inplace=False)
    assert res["agreement"] == 1.0
    assert res["chance"] == pytest.approx(9 / 19)
    assert res["table"].to_numpy().tolist() == [[10, 0], [0, 10]]


def test_nn_contingency_exact_counts():
    pos = np.array([[0.0], [1.0], [10.0], [11.0], [20.0]])
    labels = ["a", "a", "b", "b", "a"]
    sdata = sample_adata(labels, {"X_1d": pos})
    res = mst.tl.nn_contingency(sdata, "label", use_rep="X_1d", inplace=False)
    # s4 (at 20, label a) has s3 (at 11, label b) as nearest neighbour.
    assert res["table"].loc["a"].tolist() == [2, 1]
    assert res["table"].loc["b"].tolist() == [0, 2]
    assert res["agreement"] == pytest.approx(4 / 5)
    assert res["chance"] == pytest.approx(3 / 5 * 2 / 4 + 2 / 5 * 1 / 4)
    assert res["neighbors"].to_dict() == {
        "s0": "s1",
        "s1": "s0",
        "s2": "s3",
        "s3": "s2",
        "s4": "s3",
    }
    assert res["per_label"].to_dict() == pytest.approx({"a": 2 / 3, "b": 1.0})
    assert "nn_label_X_1d" not in sdata.uns
    assert mst.tl.nn_contingency(sdata, "label", use_rep="X_1d", key_added="nn") is None
    assert sdata.uns["nn"]["agreement"] == pytest.approx(0.8)
    stored = mst.get.result_df(sdata, "nn")
    pd.testing.assert_frame_equal(stored, res["table"])
    assert stored.attrs["chance"] == res["chance"] and stored.attrs["n"] == 5


def test_nn_contingency_batch_rate_and_k_neighbours():
    rng = np.random.default_rng(5)
    batch = np.repeat(["b1", "b2"], 10)
    rep = rng.normal(size=(20, 2)) + np.where(batch == "b1", 0.0, 50.0)[:, None]
    sdata = sample_adata(batch, {"X": rep}, batch=batch)
    res = mst.tl.nn_contingency(sdata, "batch", use_rep="X", n_neighbors=3, inplace=False)
    assert res["agreement"] == 1.0
    assert res["table"].to_numpy().sum() == 60
    assert not any(k.startswith("nn_") for k in sdata.uns)
    with pytest.raises(ValueError, match="n_neighbors"):
        mst.tl.nn_contingency(sdata, "batch", use_rep="X", n_neighbors=0)


def test_evaluation_rejects_nonfinite_representation():
    rep = np.ones((6, 2))
    rep[2, 0] = np.nan
    sdata = sample_adata(["a", "b"] * 3, {"X_bad": rep})
    with pytest.raises(ValueError, match="NaN/inf"):
        mst.tl.nn_contingency(sdata, "label", use_rep="X_bad")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="sample-level AnnData"):
            mst.tl.linear_probe(rep, "label")


# ------------------------------------------------------------- stored results, several reps


def test_representations_compared_through_stored_results(tmp_path):
    """Each tool stores its result under its own key; result_df and the plots read them."""
    import matplotlib

    matplotlib.use("Agg")
    cells, true = cells_with_types(24, seed=5)
    names = [f"s{s}" for s in range(24)]
    rng = np.random.default_rng(6)
    labels = np.where(true.loc[names, "T"] > true.loc[names, "T"].median(), "hi", "lo")
    sdata = sample_adata(labels, {"X_true": true.loc[names].to_numpy()})
    sdata.obs_names = names
    sdata.obsm["X_rand"] = rng.normal(size=(24, 3))
    sdata.obs["age"] = true.loc[names, "B"].to_numpy() * 100
    for rep in ("X_true", "X_rand"):
        assert mst.tl.linear_probe(sdata, "label", use_rep=rep, n_repeats=2) is None
        assert mst.tl.linear_probe(sdata, "age", use_rep=rep, n_repeats=2) is None
        assert mst.tl.nn_contingency(sdata, "label", use_rep=rep) is None
        mst.tl.celltype_retrieval(sdata, cells, "sample", "cell_type", use_rep=rep)
    sdata.write_h5ad(tmp_path / "s.h5ad")
    sdata = ad.read_h5ad(tmp_path / "s.h5ad")

    def get(key, row, column="mean"):
        table = mst.get.result_df(sdata, key)
        return table.set_index("metric").loc[row, column] if "metric" in table else table

    assert get("probe_label_X_true", "accuracy") > get("probe_label_X_rand", "accuracy")
    assert get("probe_age_X_true", "r2") > 0.8
    ret = mst.get.result_df(sdata, "retrieval_cell_type_X_true")
    assert ret.index[-1] == "(mean)" and ret.loc["(mean)", "relative_mae"] < 1
    assert ret.attrs["use_rep"] == "X_true" and ret.attrs["cell_type_key"] == "cell_type"
    nn = mst.get.result_df(sdata, "nn_label_X_true")
    assert list(nn.index) == ["hi", "lo"] and int(nn.to_numpy().sum()) == 24
    assert nn.attrs["agreement"] == pytest.approx(np.trace(nn.to_numpy()) / 24)
    direct = mst.tl.nn_contingency(sdata, "label", use_rep="X_true", inplace=False)
    pd.testing.assert_frame_equal(nn, direct["table"])
    assert direct["agreement"] == nn.attrs["agreement"]
    # The plots take the sample AnnData and a key (or the column the results are about).
    ax = mst.pl.probe(sdata, "label", show=False)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"X_true", "X_rand", "chance"}
    mst.pl.probe(sdata, {"truth": "probe_age_X_true"}, metrics=("r2",), show=False)
    mst.pl.celltype_retrieval(sdata, "cell_type", show=False)
    mst.pl.nn_contingency(sdata, "nn_label_X_rand", show=False)
    with pytest.raises(KeyError, match="linear_probe"):
        mst.pl.probe(sdata, "nope", show=False)
    with pytest.raises(ValueError, match=r"holds a mst\.tl\.nn_contingency result, not a"):
        mst.pl.probe(sdata, "nn_label_X_true", show=False)
