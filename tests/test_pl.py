"""Every plot renders headless (Agg), returns its Axes with show=False and saves a PNG."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import maestro_sc as mst


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def sdata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    labels = np.repeat(["healthy", "sick", "recovered"], 8)
    centres = {"healthy": 0.0, "sick": 3.0, "recovered": 1.5}
    rep = rng.normal(size=(24, 5)) + np.array([centres[x] for x in labels])[:, None]
    obs = pd.DataFrame(
        {
            "diagnosis": pd.Categorical(labels),
            "batch": pd.Categorical(np.tile(["b1", "b2"], 12)),
            "age": rng.uniform(20, 80, 24),
        },
        index=[f"s{i}" for i in range(24)],
    )
    sdata = ad.AnnData(rng.normal(size=(24, 3)).astype(np.float32), obs=obs)
    sdata.obsm["X_rep"] = rep
    sdata.obsm["X_umap"] = rep[:, :2]
    sdata.obsm["X_other"] = rng.normal(size=(24, 3))
    return sdata


def saved(path) -> bool:
    return path.exists() and path.stat().st_size > 1000


def test_embedding(sdata, tmp_path):
    ax = mst.pl.embedding(sdata, "diagnosis", show=False, save=tmp_path / "e.png")
    assert isinstance(ax, matplotlib.axes.Axes)
    assert saved(tmp_path / "e.png")
    axes = mst.pl.embedding(sdata, ["diagnosis", "age"], basis="X_rep", show=False)
    assert len(axes) == 2
    _, own = plt.subplots()
    assert mst.pl.embedding(sdata, "batch", ax=own, show=False) is own
    with pytest.raises(KeyError, match=r"sc\.tl\.umap"):
        mst.pl.embedding(ad.AnnData(sdata.X), "diagnosis", show=False)


def test_nn_contingency(sdata, tmp_path):
    mst.tl.nn_contingency(sdata, "diagnosis", use_rep="X_rep")
    ax = mst.pl.nn_contingency(
        sdata, "diagnosis", use_rep="X_rep", show=False, save=tmp_path / "nn.png"
    )
    assert saved(tmp_path / "nn.png")
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 9
    assert sum(int(t) for t in texts) == 24
    assert ax.get_title().startswith("X_rep: agreement")
    # The uns key itself works too, and reads the stored result (no recomputation).
    again = mst.pl.nn_contingency(sdata, "nn_diagnosis_X_rep", use_rep="other", show=False)
    assert [t.get_text() for t in again.texts] == texts
    assert again.get_title() == ax.get_title()


def test_nn_contingency_without_a_stored_result_is_deprecated(sdata):
    with pytest.warns(DeprecationWarning, match=r"mst\.tl\.nn_contingency"):
        ax = mst.pl.nn_contingency(sdata, "diagnosis", use_rep="X_rep", show=False)
    assert sum(int(t.get_text()) for t in ax.texts) == 24
    assert not any(k.startswith("nn_") for k in sdata.uns)
    mst.tl.nn_contingency(sdata, "diagnosis", use_rep="X_rep")
    with pytest.warns(DeprecationWarning, match="ignored"):
        mst.pl.nn_contingency(sdata, "diagnosis", use_rep="X_rep", metric="cosine", show=False)
    mst.tl.linear_probe(sdata, "diagnosis", use_rep="X_rep", n_repeats=1, key_added="p")
    with pytest.raises(ValueError, match=r"holds a mst\.tl\.linear_probe result"):
        mst.pl.nn_contingency(sdata, "p", show=False)


def test_probe_plot(sdata, tmp_path):
    for rep in ["X_rep", "X_other"]:
        assert mst.tl.linear_probe(sdata, "diagnosis", use_rep=rep, n_repeats=1) is None
    ax = mst.pl.probe(sdata, "diagnosis", show=False, save=tmp_path / "probe.png")
    assert saved(tmp_path / "probe.png")
    assert len(ax.patches) == 6
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["chance", "X_rep", "X_other"]
    keys = ["probe_diagnosis_X_other", "probe_diagnosis_X_rep"]
    ax = mst.pl.probe(sdata, keys, show=False)
    assert ax.get_legend_handles_labels()[1] == ["chance", "X_other", "X_rep"]
    ax = mst.pl.probe(sdata, {"mine": keys[1]}, ("accuracy",), show=False)
    assert ax.get_legend_handles_labels()[1] == ["chance", "mine"]
    mst.tl.linear_probe(sdata, "age", use_rep="X_rep", n_repeats=1)
    mst.pl.probe(sdata, "age", metrics=("mae", "r2"), show=False, save=tmp_path / "age.png")
    with pytest.raises(KeyError, match="Metrics"):
        mst.pl.probe(sdata, "probe_age_X_rep", show=False)
    with pytest.raises(KeyError, match="probe_diagnosis_X_rep"):
        mst.pl.probe(sdata, "nothing", show=False)
    with pytest.raises(TypeError, match="Pass `key`"):
        mst.pl.probe(sdata, show=False)


def test_probe_plot_of_tables_is_deprecated(sdata):
    results = {
        rep: mst.tl.linear_probe(sdata, "diagnosis", use_rep=rep, n_repeats=1, inplace=False)
        for rep in ["X_rep", "X_other"]
    }
    with pytest.warns(DeprecationWarning, match="deprecated"):
        ax = mst.pl.probe(results, show=False)
    assert ax.get_legend_handles_labels()[1] == ["chance", "X_rep", "X_other"]
    long = pd.concat([t.assign(method=m) for m, t in results.items()])
    with pytest.warns(DeprecationWarning):
        ax = mst.pl.probe(long, ("accuracy",), show=False)  # the old second argument: metrics
    assert len(ax.patches) == 2


def retrieval_tables():
    types = ["T", "B", "NK"]
    results = {}
    for i, method in enumerate(["X_a", "X_b"]):
        table = pd.DataFrame(
            {
                "mae": [0.01 * (i + 1), 0.02, 0.03],
                "mae_mean_predictor": [0.05, 0.04, 0.06],
                "relative_mae": [0.2, 0.5, 0.5],
                "mean_proportion": [0.5, 0.3, 0.2],
            },
            index=pd.Index(types, name="cell_type"),
        )
        table.loc["(mean)"] = table.mean()
        table.attrs = {"use_rep": method, "cell_type_key": "cell_type"}
        results[method] = table
    return results


def test_celltype_retrieval_plot(sdata, tmp_path):
    from maestro_sc._results import RETRIEVAL, store_result

    results = retrieval_tables()
    for method, table in results.items():
        store_result(sdata, f"retrieval_cell_type_{method}", RETRIEVAL, table)
    before = results["X_a"].copy()
    ax = mst.pl.celltype_retrieval(sdata, "cell_type", show=False, save=tmp_path / "ret.png")
    assert saved(tmp_path / "ret.png")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mean", "T", "B", "NK"]
    assert len(ax.patches) == 8
    assert {"X_a", "X_b"} <= set(ax.get_legend_handles_labels()[1])
    pd.testing.assert_frame_equal(results["X_a"], before)
    with pytest.warns(DeprecationWarning):
        ax = mst.pl.celltype_retrieval(results, show=False)
    assert len(ax.patches) == 8


def test_reconstruction(tmp_path):
    rng = np.random.default_rng(1)
    cells = rng.normal(size=(300, 4))
    mask = cells[:, 0] > 0.3
    recon = rng.normal(size=(250, 4))
    axes = mst.pl.reconstruction(cells, mask, recon, show=False, save=tmp_path / "rec.png")
    assert len(axes) == 4
    assert saved(tmp_path / "rec.png")
    axes = mst.pl.reconstruction(cells, np.where(mask)[0], recon, markers=list("abcd"), show=False)
    assert len(axes) == 5
    assert axes[1].get_xlim() == axes[3].get_xlim()
    with pytest.raises(ValueError, match="same markers"):
        mst.pl.reconstruction(cells, mask, recon[:, :3], show=False)


def test_training_history(tmp_path):
    steps = np.arange(50)
    history = pd.DataFrame(
        {
            "step": steps,
            "epoch": steps // 10,
            "lr": 1e-3,
            "loss": 2 * np.exp(-steps / 20) + 1,
            "rec": np.exp(-steps / 20) + 0.5,
            "sd": np.exp(-steps / 20) + 0.5,
            "z_std": 0.5 + 0.01 * steps,
            "teacher_entropy": 3 - 0.01 * steps,
        }
    )
    axes = mst.pl.training_history(history, smooth=5, show=False, save=tmp_path / "h.png")
    assert saved(tmp_path / "h.png")
    assert [
        line.get_label() for line in axes[0].get_lines() if not line.get_label().startswith("_")
    ] == [
        "loss",
        "rec",
        "sd",
    ]
    mst.pl.training_history(history[["step", "loss"]], logy=True, show=False)
    with pytest.raises(ValueError, match="empty"):
        mst.pl.training_history(history.iloc[:0], show=False)


def test_training_history_draws_learning_diagnostics(tmp_path):
    steps = np.arange(40)
    history = pd.DataFrame(
        {
            "step": steps,
            "loss": 3 - 0.01 * steps,
            "rec": 2 - 0.01 * steps,
            "rec_floor": np.where(steps % 10 == 0, 1.2, np.nan),
            "sd": 1.0 + 0 * steps,
            "teacher_entropy_frac": 0.95 - 0.005 * steps,
            "kl": 0.01 + 0.001 * steps,
            "z_std": 0.5 + 0 * steps,
            "proto_drift": 0.002 * steps,
            "con_acc": 0.3 + 0.01 * steps,
        }
    )
    axes = mst.pl.training_history(history, show=False, save=tmp_path / "d.png")
    assert saved(tmp_path / "d.png")
    labels = [line.get_label() for line in axes[0].get_lines()]
    assert "rec floor (same sample)" in labels
    floor = next(line for line in axes[0].get_lines() if line.get_label().startswith("rec floor"))
    assert len(floor.get_xdata()) == 4  # only the steps where the floor was logged
    assert axes[1].get_ylim()[1] <= 1.05  # entropy fraction on a 0-1 scale
    legend = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert legend == ["teacher entropy / log K", "distillation KL (nats)"]
    legend = [t.get_text() for t in axes[2].get_legend().get_texts()]
    assert "prototype drift (std. units)" in legend and "contrastive accuracy" in legend


def test_cell_attribution(tmp_path):
    rng = np.random.default_rng(2)
    cells = ad.AnnData(
        rng.normal(size=(400, 5)).astype(np.float32),
        obs=pd.DataFrame(
            {"sample": np.repeat(["a", "b"], 200), "maestro_attribution": rng.uniform(size=400)},
            index=[str(i) for i in range(400)],
        ),
    )
    ax = mst.pl.cell_attribution(cells, show=False, save=tmp_path / "attr.png")
    assert saved(tmp_path / "attr.png")
    assert ax.get_xlabel() == "PC1"
    cells.obsm["X_umap"] = rng.normal(size=(400, 2))
    ax = mst.pl.cell_attribution(cells, sample_key="sample", samples=["a"], show=False)
    assert ax.get_xlabel() == "UMAP1"
    assert len(ax.collections[0].get_offsets()) == 200
    with pytest.raises(KeyError, match="cell_attribution"):
        mst.pl.cell_attribution(cells, score_key="nope", show=False)
