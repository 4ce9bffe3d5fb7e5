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
    ax = mst.pl.nn_contingency(
        sdata, "diagnosis", use_rep="X_rep", show=False, save=tmp_path / "nn.png"
    )
    assert saved(tmp_path / "nn.png")
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 9
    assert sum(int(t) for t in texts) == 24
    assert "agreement" in ax.get_title()
    assert not any(k.startswith("nn_") for k in sdata.uns)


def test_probe_plot(sdata, tmp_path):
    results = {
        rep: mst.tl.linear_probe(sdata, "diagnosis", use_rep=rep, n_repeats=1, inplace=False)
        for rep in ["X_rep", "X_other"]
    }
    ax = mst.pl.probe(results, show=False, save=tmp_path / "probe.png")
    assert saved(tmp_path / "probe.png")
    assert len(ax.patches) == 6
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["chance", "X_rep", "X_other"]
    long = pd.concat([t.assign(method=m) for m, t in results.items()])
    mst.pl.probe(long, show=False)
    age = {"X_rep": mst.tl.linear_probe(sdata, "age", use_rep="X_rep", n_repeats=1, inplace=False)}
    mst.pl.probe(age, metrics=("mae", "r2"), show=False, save=tmp_path / "probe_age.png")
    with pytest.raises(KeyError, match="Metrics"):
        mst.pl.probe(age, show=False)


def test_celltype_retrieval_plot(tmp_path):
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
        results[method] = table
    before = results["X_a"].copy()
    ax = mst.pl.celltype_retrieval(results, show=False, save=tmp_path / "ret.png")
    assert saved(tmp_path / "ret.png")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mean", "T", "B", "NK"]
    assert len(ax.patches) == 8
    pd.testing.assert_frame_equal(results["X_a"], before)


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
