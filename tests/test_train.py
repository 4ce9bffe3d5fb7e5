"""pretrain / embed_samples / MaestroModel: the Lightning layer and the user API."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import maestro_sc as mst
from maestro_sc.tl import MaestroModel

from .conftest import TINY, tiny_cohort


def test_pretrain_history_and_embed(cohort, train):
    model = train(cohort)
    assert isinstance(model, MaestroModel)
    assert model.markers == list(cohort.var_names)
    hist = model.history
    assert len(hist) == model.summary["steps"] == 4  # 8 samples / batch 4 x 2 epochs
    for col in ("loss", "rec", "sd", "z_std", "lr", "step"):
        assert col in hist.columns
    assert np.isfinite(hist["loss"]).all()
    # cosine schedule: the learning rate decreases
    assert hist["lr"].iloc[-1] < hist["lr"].iloc[0]
    # the Sinkhorn iterations of each step, within the cap
    cap = model.config.ot_max_iter
    assert ((hist["ot_iters"] >= 1) & (hist["ot_iters"] <= cap)).all()
    z = model.embed(cohort, "sample", progress=False)
    assert list(z.index) == [f"s{i}" for i in range(8)]
    assert np.isfinite(z.to_numpy()).all()


def test_embed_samples_output(cohort):
    before = cohort.copy()
    sdata = mst.tl.embed_samples(
        cohort, "sample", preset="cpu", max_epochs=1, progress=False, **TINY
    )
    assert list(sdata.obs_names) == [f"s{i}" for i in range(8)]
    assert "X_maestro" in sdata.obsm and "X_umap" in sdata.obsm
    assert "neighbors" in sdata.uns
    assert list(sdata.uns["maestro"]["markers"]) == list(cohort.var_names)
    assert "kind" in sdata.obs and "cell" not in sdata.obs
    # the input is untouched
    np.testing.assert_array_equal(before.X, cohort.X)
    assert before.obs.equals(cohort.obs) and before.uns.keys() == cohort.uns.keys()


def test_embedding_is_deterministic_and_bitwise_after_save_load(cohort, tmp_path, train):
    model = train(cohort)
    z1 = model.embed(cohort, "sample", progress=False).to_numpy()
    z2 = model.embed(cohort, "sample", progress=False).to_numpy()
    np.testing.assert_array_equal(z1, z2)
    model.save(tmp_path / "m")
    loaded = MaestroModel.load(tmp_path / "m")
    np.testing.assert_array_equal(z1, loaded.embed(cohort, "sample", progress=False).to_numpy())
    assert loaded.config.to_dict() == model.config.to_dict()
    assert len(loaded.history) == len(model.history)


def test_same_seed_same_model(cohort, train):
    a = train(cohort).embed(cohort, "sample", progress=False).to_numpy()
    b = train(cohort).embed(cohort, "sample", progress=False).to_numpy()
    np.testing.assert_array_equal(a, b)
    c = train(cohort, random_state=1).embed(cohort, "sample", progress=False).to_numpy()
    assert not np.array_equal(a, c)


def test_training_in_two_parts_side_by_side_is_reproducible(cohort, train):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the parts run in 2 threads, through the Lightning loop
    try:
        first = train(cohort, step_parts=2)
        second = train(cohort, step_parts=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert np.isfinite(first.history["loss"]).all()
    np.testing.assert_array_equal(first.history["loss"], second.history["loss"])
    np.testing.assert_array_equal(
        first.embed(cohort, "sample", progress=False).to_numpy(),
        second.embed(cohort, "sample", progress=False).to_numpy(),
    )


def interrupt_at(monkeypatch, step):
    """Make training raise KeyboardInterrupt when it reaches global step ``step``."""
    from maestro_sc.train.module import MaestroTrainingPlan

    original = MaestroTrainingPlan.training_step

    def interrupting(self, batch, batch_idx):
        if self.global_step == step:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(MaestroTrainingPlan, "training_step", interrupting)


def test_resume_equals_uninterrupted(cohort, tmp_path, monkeypatch, train):
    full = train(cohort, max_epochs=4)
    # killed mid-epoch 3 (step 5 of 8): last.ckpt holds the end of epoch 2
    with monkeypatch.context() as patch:
        interrupt_at(patch, 5)
        with pytest.warns(UserWarning, match="interrupted"):
            train(cohort, max_epochs=4, checkpoint_dir=tmp_path / "ck")
    resumed = train(cohort, max_epochs=4, resume=tmp_path / "ck" / "last.ckpt")
    assert resumed.summary["steps"] == full.summary["steps"] == 8
    za = full.embed(cohort, "sample", progress=False).to_numpy()
    zb = resumed.embed(cohort, "sample", progress=False).to_numpy()
    np.testing.assert_allclose(za, zb, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(full.history["loss"], resumed.history["loss"], rtol=1e-4)


def test_keyboard_interrupt_leaves_usable_model(cohort, monkeypatch, train):
    interrupt_at(monkeypatch, 2)
    with pytest.warns(UserWarning, match="interrupted"):
        model = train(cohort, max_epochs=3)
    assert model.summary["interrupted"] and model.summary["steps"] == 2
    assert np.isfinite(model.embed(cohort, "sample", progress=False).to_numpy()).all()


def test_untrained_control(cohort, train):
    model = train(cohort, max_epochs=0)
    assert model.summary["steps"] == 0 and len(model.history) == 0
    assert np.isfinite(model.embed(cohort, "sample", progress=False).to_numpy()).all()


def test_small_samples_oversampled_and_tiny_ones_skipped(train):
    adata = tiny_cohort(n_samples=6, n_cells=30)  # 30-65 cells < n_sub=64: used whole/oversampled
    small = adata[~((adata.obs["sample"] == "s0") & (adata.obs["cell"] >= 10))].copy()
    with pytest.warns(UserWarning, match="s0"):
        model = train(small)
    assert model.summary["n_samples"] == 5
    with pytest.raises(ValueError, match="s0"):
        train(small, strict=True)
    # every sample (also the skipped one) still gets an embedding
    assert model.embed(small, "sample", progress=False).shape[0] == 6


def test_panel_mismatch_and_reorder(cohort, train):
    model = train(cohort, max_epochs=1)
    reordered = cohort[:, list(reversed(cohort.var_names))].copy()
    np.testing.assert_allclose(
        model.embed(cohort, "sample", progress=False).to_numpy(),
        model.embed(reordered, "sample", progress=False).to_numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(KeyError, match="m0"):
        model.embed(cohort[:, 1:].copy(), "sample", progress=False)
    extra = cohort.copy()
    extra.var_names = [*cohort.var_names[:-1], "CD_extra"]
    with pytest.raises(KeyError, match="CD_extra"):
        model.embed(extra, "sample", progress=False)


def test_bad_inputs(cohort, train):
    with pytest.raises(KeyError, match="kind"):  # the message lists the obs columns
        mst.tl.pretrain(cohort, "donor", progress=False)
    one = cohort[cohort.obs["sample"] == "s0"].copy()
    with pytest.raises(ValueError, match="at least 2 samples"):
        train(one)
    bad = cohort.copy()
    bad.X[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train(bad)
    with pytest.raises(TypeError, match="Unknown MaestroConfig keys"):
        train(cohort, latent_dimension=3)
    with pytest.raises(TypeError, match="MaestroModel"):
        mst.tl.embed_samples(cohort, "sample", model="not a model")


def test_custom_key_added(cohort, train):
    model = train(cohort, max_epochs=1)
    sdata = mst.tl.embed_samples(
        cohort, "sample", model=model, key_added="X_mine", progress=False, umap=False
    )
    assert "X_mine" in sdata.obsm and "X_maestro" not in sdata.obsm
    assert "X_umap" not in sdata.obsm and "neighbors" in sdata.uns
    assert sdata.uns["maestro"]["key_added"] == "X_mine"


def test_corrupted_or_foreign_model_folder(cohort, tmp_path, train):
    model = train(cohort, max_epochs=1)
    path = model.save(tmp_path / "m")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        MaestroModel.load(path)
    (tmp_path / "foreign").mkdir()
    with pytest.raises(ValueError, match="not a saved maestro_sc model"):
        MaestroModel.load(tmp_path / "foreign")
    path2 = model.save(tmp_path / "m2")
    meta = (
        (path2 / "maestro.json").read_text().replace('"format_version": 1', '"format_version": 99')
    )
    (path2 / "maestro.json").write_text(meta)
    with pytest.raises(ValueError, match="format version 99"):
        MaestroModel.load(path2)
    with pytest.raises(FileExistsError):
        model.save(path2)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_train.py"
    # Write a standalone script (DDP re-executes it for the second process).
    script.write_text(
        textwrap.dedent(
            f"""
            import numpy as np, anndata as ad, pandas as pd, torch
            import maestro_sc as mst
            rng = np.random.default_rng(0)
            x = rng.normal(size=(8 * 200, 5)).astype("float32")
            obs = pd.DataFrame({{"sample": np.repeat([f"s{{i}}" for i in range(8)], 200)}})
            obs.index = obs.index.astype(str)
            adata = ad.AnnData(x, obs=obs)
            model = mst.tl.pretrain(adata, "sample", preset="cpu", max_epochs=4, progress=False,
                                    accelerator="cpu", devices=2, strategy="ddp",
                                    **{TINY!r})
            if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
                raise SystemExit(0)
            z = model.embed(adata, "sample", progress=False)
            assert np.isfinite(z.to_numpy()).all() and z.shape[0] == 8
            lr = model.history["lr"].to_numpy()
            print("DDP_OK", model.summary["steps"], lr[-1] / lr[0])
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DDP_OK" in result.stdout
    # 8 samples, batch 4, 4 epochs: 8 steps on one device, 4 per process on two. The cosine
    # schedule spans the 4 steps each process takes: at the last one (3 / 4 of the way) the
    # learning rate is down to about 0.15 of its start (0.69 if it spanned 8).
    steps, ratio = result.stdout.split("DDP_OK")[1].split()[:2]
    assert int(steps) == 4
    assert float(ratio) < 0.3


def test_schedule_spans_this_process_share_of_the_steps(cohort, train, monkeypatch):
    """As rank 0 of 2 (each process draws every second sample), the schedules end on time."""
    from maestro_sc.train.data import EpochSampler

    monkeypatch.setattr(EpochSampler, "_rank", lambda self: (0, 2))
    model = train(cohort, max_epochs=4)  # 8 samples, batch 4: 1 step per epoch and process
    lr = model.history["lr"].to_numpy()
    assert model.summary["steps"] == len(lr) == 4
    # at step 3 of 4 the cosine is at 3/4 of its way: 0.15 of the start, 0.69 if it spanned 8
    assert lr[-1] / lr[0] < 0.3


# ------------------------------------------------ keeping the model trained by embed_samples

#: A few seconds of training on a small synthetic cohort.
SMALL = dict(preset="cpu", max_epochs=1, random_state=0, **TINY)


def small_cohort(n_samples=8, random_state=0):
    return mst.datasets.synthetic_cohort(
        n_samples=n_samples, cells_per_sample=(200, 400), random_state=random_state
    )


def test_embed_samples_returns_and_saves_the_trained_model(tmp_path):
    adata, new = small_cohort(), small_cohort(n_samples=4, random_state=1)
    sdata, model = mst.tl.embed_samples(
        adata, "sample", progress=False, umap=False, return_model=True,
        save_model=tmp_path / "model", **SMALL,
    )  # fmt: skip
    assert isinstance(model, MaestroModel) and model.summary["steps"] == 2
    # The same model as pretrain with the same seed: it embeds new samples bitwise alike.
    reference = mst.tl.pretrain(adata, "sample", progress=False, **SMALL)
    kept = mst.tl.embed_samples(new, "sample", model=model, progress=False, umap=False)
    again = mst.tl.embed_samples(new, "sample", model=reference, progress=False, umap=False)
    np.testing.assert_array_equal(kept.obsm["X_maestro"], again.obsm["X_maestro"])
    np.testing.assert_array_equal(
        sdata.obsm["X_maestro"], reference.embed(adata, "sample", progress=False).to_numpy()
    )
    # The saved copy is that model too.
    loaded = MaestroModel.load(tmp_path / "model")
    np.testing.assert_array_equal(
        loaded.embed(new, "sample", progress=False).to_numpy(), kept.obsm["X_maestro"]
    )
    assert sdata.uns["maestro"]["saved_model"] == str(tmp_path / "model")
    # return_model with a given model returns that model.
    out = mst.tl.embed_samples(new, "sample", model=model, progress=False, return_model=True)
    assert out[1] is model and out[0].n_obs == 4


def test_save_model_folder_is_checked_before_training(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training ran before save_model was checked")

    monkeypatch.setattr(mst.tl._embed, "_pretrain", no_training)
    adata = small_cohort(n_samples=4)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="not empty"):
        mst.tl.embed_samples(adata, "sample", save_model=full, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        mst.tl.embed_samples(adata, "sample", save_model=tmp_path / "file", progress=False)
    with pytest.raises(TypeError, match="folder path"):
        mst.tl.embed_samples(adata, "sample", save_model=3, progress=False)
    with pytest.raises(TypeError, match="return_model"):
        mst.tl.embed_samples(adata, "sample", return_model="yes", progress=False)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_training_arguments_with_a_model_raise_before_anything_is_done(cohort, tmp_path, train):
    model = train(cohort, max_epochs=1)
    before = cohort.copy()
    for kwargs in [
        {"preset": "cpu"},
        {"markers": ["m0", "m1"]},
        {"max_epochs": 1},
        {"batch_size": 2},
        {"accelerator": "cpu"},
        {"strict": True},
        {"checkpoint_dir": tmp_path / "ck"},
        {"latent_dim": 8},
        {"n_sub": 32, "min_steps": 2},
    ]:
        with pytest.raises(ValueError, match="only apply when embed_samples trains") as info:
            mst.tl.embed_samples(cohort, "sample", model=model, progress=False, **kwargs)
        for name in kwargs:
            assert f"`{name}`" in str(info.value)
    with pytest.raises(ValueError, match=r"model\.save"):
        mst.tl.embed_samples(
            cohort, "sample", model=model, save_model=tmp_path / "m", progress=False
        )
    assert not (tmp_path / "ck").exists() and not (tmp_path / "m").exists()
    np.testing.assert_array_equal(before.X, cohort.X)
    assert before.obs.equals(cohort.obs) and before.uns.keys() == cohort.uns.keys()
    # Arguments that also matter for embedding still work with a model, as does the model's
    # own marker list (in any order).
    sdata = mst.tl.embed_samples(
        cohort, "sample", model=model, markers=list(reversed(model.markers)), which="student",
        chunk_size=50, random_state=3, progress=False, umap=False,
    )  # fmt: skip
    np.testing.assert_array_equal(
        sdata.obsm["X_maestro"],
        model.embed(cohort, "sample", which="student", chunk_size=50, progress=False).to_numpy(),
    )


# ------------------------------------------------------------- untransformed-data warning


def raw_cohort():
    """The synthetic cohort with arcsinh (cofactor 150) undone: flow-cytometry-like raw values."""
    adata = small_cohort(n_samples=6)
    adata.X = (150 * np.sinh(adata.X.astype(np.float64))).astype(np.float32)
    return adata


def test_untransformed_values_warn_once_naming_arcsinh(monkeypatch):
    import maestro_sc.tl._embed as embed_module

    raw = raw_cohort()
    fast = dict(SMALL, max_epochs=0)
    with pytest.warns(UserWarning, match=r"look untransformed.*mst\.pp\.arcsinh") as record:
        model = mst.tl.pretrain(raw, "sample", progress=False, **fast)
    # The warning points at the caller's line, not into the package.
    assert {w.filename for w in record if "untransformed" in str(w.message)} == {__file__}
    with pytest.warns(UserWarning, match=r"mst\.pp\.arcsinh"):
        mst.tl.embed_samples(raw, "sample", model=model, progress=False, umap=False)

    # Training inside embed_samples: the cells are indexed, and checked, once.
    built = []
    real_index = embed_module.SampleIndex

    def counting_index(*args, **kwargs):
        built.append(1)
        return real_index(*args, **kwargs)

    monkeypatch.setattr(embed_module, "SampleIndex", counting_index)
    with pytest.warns(UserWarning, match="untransformed") as record:
        mst.tl.embed_samples(raw, "sample", progress=False, umap=False, **fast)
    assert sum("untransformed" in str(w.message) for w in record) == 1
    assert len(built) == 1


def test_transformed_values_do_not_warn():
    adata = small_cohort(n_samples=6)  # arcsinh-transformed
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*untransformed")
        model = mst.tl.pretrain(adata, "sample", progress=False, **dict(SMALL, max_epochs=0))
        mst.tl.embed_samples(adata, "sample", model=model, progress=False, umap=False)


def test_untransformed_check_reads_a_bounded_subsample(monkeypatch):
    from maestro_sc._data import SampleIndex
    from maestro_sc.tl import _embed

    monkeypatch.setattr(_embed, "_RAW_CHECK_CELLS", 300)
    index = SampleIndex(raw_cohort(), "sample")
    rows = []
    real = index.read_rows

    def counting(r):
        rows.append(len(r))
        return real(r)

    index.read_rows = counting
    with pytest.warns(UserWarning, match="untransformed"):
        _embed.warn_if_untransformed(index, stacklevel=1)
    assert len(rows) == index.n_samples and sum(rows) <= 300
