"""MuData input (issue 12): ``mod=``, sample keys in modality/global obs, panels, round trips.

Every public function that reads cells takes a MuData and ``mod=`` and gives exactly what it
gives for the modality alone; the modality is found, or the error lists the modalities; the
sample column is looked up in the modality's obs, then in the global obs (also as
``mod:column``); and results survive ``.h5ad``/``.h5mu`` round trips.
"""

from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest

import maestro_sc as mst

from .conftest import TINY, tiny_cohort

FAST = dict(preset="cpu", max_epochs=1, progress=False, **TINY)

pytestmark = [
    pytest.mark.filterwarnings("ignore:From 0.4 .update:FutureWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def prot_cells(seed: int = 0) -> ad.AnnData:
    """The protein modality: 6 samples, markers m0..m4, cell types and batches."""
    a = tiny_cohort(n_samples=6, n_cells=40, seed=seed)
    a.obs["cell_type"] = np.where(a.X[:, 0] > 0.5, "T", "B")
    a.obs["batch"] = np.where(a.obs["kind"] == "A", "b1", "b2")
    return a


def rna_for(prot: ad.AnnData) -> ad.AnnData:
    rng = np.random.default_rng(5)
    x = rng.poisson(2.0, (prot.n_obs, 3)).astype(np.float32)
    return ad.AnnData(
        x, obs=pd.DataFrame(index=prot.obs_names), var=pd.DataFrame(index=["g1", "g2", "g3"])
    )


def two_modalities(prot: ad.AnnData | None = None) -> md.MuData:
    prot = prot_cells() if prot is None else prot
    return md.MuData({"prot": prot, "rna": rna_for(prot)})


def modality(data):
    return data.mod["prot"] if isinstance(data, md.MuData) else data


def _dense(x) -> np.ndarray:
    return x.toarray() if hasattr(x, "toarray") else np.asarray(x)


@pytest.fixture(scope="module")
def model():
    return mst.tl.pretrain(prot_cells(seed=1), "sample", **FAST)


def _spill():
    return pd.DataFrame([[1.0, 0.1], [0.05, 1.0]], index=["m0", "m1"], columns=["m0", "m1"])


def _in_place(run):
    """Run an in-place ``pp`` function; the result is the modality's values and names."""

    def call(data, model, **kw):
        assert run(data, **kw) is None
        target = modality(data)
        return _dense(target.X), list(target.obs_names), list(target.var_names)

    return call


def _sample_level(run, key):
    def call(data, model, **kw):
        sdata = run(data, model, **kw)
        return sdata.obsm[key], sdata.X, list(sdata.obs_names)

    return call


CALLS = {
    "pp.arcsinh": _in_place(lambda d, **k: mst.pp.arcsinh(d, 5.0, **k)),
    "pp.select_markers": _in_place(lambda d, **k: mst.pp.select_markers(d, ["m3", "m1"], **k)),
    "pp.filter_samples": _in_place(lambda d, **k: mst.pp.filter_samples(d, "sample", 60, **k)),
    "pp.subsample": _in_place(lambda d, **k: mst.pp.subsample(d, "sample", 25, **k)),
    "pp.compensate": _in_place(lambda d, **k: mst.pp.compensate(d, _spill(), **k)),
    "pp.normalize_batches": _in_place(lambda d, **k: mst.pp.normalize_batches(d, "batch", **k)),
    "tl.aggregate_samples": lambda d, m, **k: _dense(mst.tl.aggregate_samples(d, "sample", **k).X),
    "tl.pretrain": lambda d, m, **k: (
        mst.tl.pretrain(d, "sample", **k, **FAST)
        .embed(prot_cells(), "sample", progress=False)
        .to_numpy()
    ),
    "tl.embed_samples": _sample_level(
        lambda d, m, **k: mst.tl.embed_samples(d, "sample", model=m, progress=False, **k),
        "X_maestro",
    ),
    "MaestroModel.embed": lambda d, m, **k: m.embed(d, "sample", progress=False, **k).to_numpy(),
    "tl.cell_attribution": lambda d, m, **k: (
        mst.tl.cell_attribution(d, m, "sample", progress=False, **k),
        modality(d).obs["maestro_attribution"].to_numpy(),
    )[1],
    "tl.baseline_means": _sample_level(
        lambda d, m, **k: mst.tl.baseline_means(d, "sample", **k), "X_means"
    ),
    "tl.baseline_quantiles": _sample_level(
        lambda d, m, **k: mst.tl.baseline_quantiles(d, "sample", **k), "X_quantiles"
    ),
    "tl.baseline_kmeans": _sample_level(
        lambda d, m, **k: mst.tl.baseline_kmeans(d, "sample", n_clusters=4, **k), "X_kmeans4"
    ),
    "tl.baseline_flowsom": _sample_level(
        lambda d, m, **k: mst.tl.baseline_flowsom(
            d, "sample", n_clusters=3, xdim=3, ydim=3, rlen=2, **k
        ),
        "X_flowsom",
    ),
    "tl.baseline_gated": _sample_level(
        lambda d, m, **k: mst.tl.baseline_gated(d, "sample", "cell_type", **k), "X_gated"
    ),
    "tl.add_baselines": lambda d, m, **k: _add_baselines(d, **k),
    "tl.celltype_retrieval": lambda d, m, **k: mst.tl.celltype_retrieval(
        _with_means(), d, "sample", "cell_type", use_rep="X_means", n_splits=3, inplace=False, **k
    ).to_numpy(),
}


def _with_means():
    return mst.tl.baseline_means(prot_cells(), "sample")


def _add_baselines(data, **kw):
    sdata = mst.tl.aggregate_samples(prot_cells(), "sample")
    mst.tl.add_baselines(sdata, data, "sample", methods=["means", "kmeans4"], **kw)
    return sdata.obsm["X_means"], sdata.obsm["X_kmeans4"]


def _assert_same(a, b):
    if isinstance(a, tuple | list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("name", list(CALLS))
def test_mudata_and_mod_give_what_the_modality_gives(name, model):
    call = CALLS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        direct = call(prot_cells(), model)
        via_mod = call(two_modalities(), model, mod="prot")
        only = call(md.MuData({"prot": prot_cells()}), model)  # mod=None: the only modality
    _assert_same(via_mod, direct)
    _assert_same(only, direct)
    with pytest.raises(ValueError, match=r"2 modalities \['prot', 'rna'\].*mod="):
        call(two_modalities(), model)
    with pytest.raises(KeyError, match=r"'protein'.*Available modalities: \['prot', 'rna'\]"):
        call(two_modalities(), model, mod="protein")


@pytest.mark.parametrize(
    "name", ["pp.arcsinh", "pp.filter_samples", "tl.aggregate_samples", "tl.pretrain"]
)
def test_modality_with_zero_cells(name, model):
    prot = prot_cells()[:0].copy()
    mdata = md.MuData({"prot": prot, "rna": rna_for(prot_cells())})
    with pytest.raises(ValueError, match=r"'prot'.*zero cells"):
        CALLS[name](mdata, model, mod="prot")


def test_sample_key_lookup_order():
    prot = prot_cells()
    mdata = two_modalities(prot)
    expected = [f"s{i}" for i in range(6)]

    # 1. The modality's obs comes first, even when the global obs has the same name.
    mdata.obs["sample"] = "global"
    out = mst.tl.aggregate_samples(mdata, "sample", mod="prot")
    assert list(out.obs_names) == expected

    # 2. Then the global obs.
    mdata.obs["donor"] = np.where(prot.obs["kind"] == "A", "dA", "dB")
    out = mst.tl.aggregate_samples(mdata, "donor", mod="prot")
    assert list(out.obs_names) == ["dA", "dB"]
    assert out.obs["n_cells"].sum() == prot.n_obs

    # 3. "mod:column", whether or not mudata has copied the column into the global obs.
    assert "prot:sample" in mdata.obs.columns
    assert list(mst.tl.aggregate_samples(mdata, "prot:sample", mod="prot").obs_names) == expected
    with md.set_options(pull_on_update=False):
        bare = two_modalities()
    assert "prot:sample" not in bare.obs.columns
    assert list(mst.tl.aggregate_samples(bare, "prot:sample", mod="prot").obs_names) == expected
    # another modality's column is matched to the cells by obs_names
    bare.mod["rna"].obs["donor"] = np.where(prot.obs["kind"] == "A", "dA", "dB")
    assert list(mst.tl.aggregate_samples(bare, "rna:donor", mod="prot").obs_names) == ["dA", "dB"]
    mst.pp.filter_samples(bare, "rna:donor", 10, mod="prot")  # in-place functions too

    # A global column cannot be matched to cells whose names repeat.
    dup = prot_cells()
    dup.obs_names = ["same"] * dup.n_obs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mdup = md.MuData({"prot": dup})
    mdup.obs["donor"] = "d0"
    with pytest.raises(ValueError, match="obs_names are duplicated"):
        mst.tl.aggregate_samples(mdup, "donor", mod="prot")

    # 4. Neither: the error lists both places.
    with pytest.raises(KeyError) as info:
        mst.tl.aggregate_samples(mdata, "patient", mod="prot")
    message = str(info.value)
    assert "patient" in message and "'kind'" in message and "'donor'" in message
    assert "modality's obs" in message and "global obs" in message


def test_embed_samples_on_mudata_equals_the_modality(model):
    prot = prot_cells()
    direct = mst.tl.embed_samples(prot, "sample", model=model, progress=False)
    mdata = two_modalities(prot.copy())
    via = mst.tl.embed_samples(mdata, "sample", model=model, mod="prot", progress=False)
    np.testing.assert_array_equal(via.obsm["X_maestro"], direct.obsm["X_maestro"])
    np.testing.assert_array_equal(via.obsm["X_umap"], direct.obsm["X_umap"])
    np.testing.assert_array_equal(via.X, direct.X)
    pd.testing.assert_frame_equal(via.obs, direct.obs)
    assert via.uns["maestro"]["mod"] == "prot" and "mod" not in direct.uns["maestro"]
    rest = {k: v for k, v in via.uns["maestro"].items() if k != "mod"}
    assert rest.keys() == direct.uns["maestro"].keys()


def _renamed(adata: ad.AnnData, names) -> ad.AnnData:
    adata = adata.copy()
    adata.var_names = names
    return adata


def test_harmonize_two_panels(model):
    a = prot_cells()  # m0..m4
    b = _renamed(prot_cells(seed=3), ["m1", "m2", "m3", "m4", "CD57"])
    cohorts = {"cohort_a": two_modalities(a), "cohort_b": two_modalities(b)}
    with pytest.warns(UserWarning, match=r"cohort_a: \['m0'\]; cohort_b: \['CD57'\]"):
        both = mst.pp.harmonize_panels(cohorts, mod="prot", batch_key="cohort")
    assert list(both.var_names) == ["m1", "m2", "m3", "m4"]
    info = both.uns["harmonize_panels"]
    assert list(info["markers"]) == ["m1", "m2", "m3", "m4"]
    assert {k: list(v) for k, v in info["dropped"].items()} == {
        "cohort_a": ["m0"],
        "cohort_b": ["CD57"],
    }
    counts = both.obs["cohort"].value_counts().to_dict()
    assert counts == {"cohort_a": a.n_obs, "cohort_b": b.n_obs}
    np.testing.assert_array_equal(both.X[: a.n_obs], a[:, 1:].X)
    # the harmonised cohort trains like any other
    trained = mst.tl.pretrain(both, "sample", **FAST)
    assert trained.markers == ["m1", "m2", "m3", "m4"]

    c = _renamed(prot_cells(), ["CD3", "CD4", "CD8", "CD19", "CD56"])
    with pytest.raises(ValueError, match="share no marker"):
        mst.pp.harmonize_panels([two_modalities(a), two_modalities(c)], mod="prot")


def test_model_embeds_superset_panel_and_refuses_missing_markers(model):
    prot = prot_cells()
    x = np.concatenate([prot.X, np.ones((prot.n_obs, 1), np.float32)], axis=1)
    var = pd.DataFrame(index=[*prot.var_names, "CD57"])
    mdata = two_modalities(ad.AnnData(x, obs=prot.obs.copy(), var=var))
    with pytest.warns(UserWarning, match=r"ignored: \['CD57'\]"):
        z = model.embed(mdata, "sample", mod="prot", progress=False)
    np.testing.assert_array_equal(
        z.to_numpy(), model.embed(prot, "sample", progress=False).to_numpy()
    )

    missing = two_modalities(prot[:, ["m1", "m2", "m3", "m4"]].copy())
    with pytest.raises(KeyError, match=r"lack the model's markers \['m0'\]"):
        mst.tl.embed_samples(missing, "sample", model=model, mod="prot", progress=False)


def test_sample_table_h5ad_round_trip(model, tmp_path):
    sdata = mst.tl.embed_samples(
        two_modalities(), "sample", model=model, mod="prot", progress=False
    )
    mst.tl.add_baselines(sdata, two_modalities(), "sample", methods=["means"], mod="prot")
    path = tmp_path / "samples.h5ad"
    sdata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert list(back.obs_names) == list(sdata.obs_names)
    pd.testing.assert_frame_equal(back.obs, sdata.obs)
    for key in ("X_maestro", "X_umap", "X_means"):
        np.testing.assert_array_equal(back.obsm[key], sdata.obsm[key])
    for key in ("connectivities", "distances"):
        np.testing.assert_array_equal(back.obsp[key].toarray(), sdata.obsp[key].toarray())
    assert back.uns["neighbors"]["params"]["use_rep"] == "X_maestro"
    assert "umap" in back.uns
    info, ref = back.uns["maestro"], sdata.uns["maestro"]
    assert set(info) == set(ref)
    assert info["mod"] == "prot" and info["key_added"] == "X_maestro"
    assert list(info["markers"]) == model.markers
    assert info["config"]["latent_dim"] == model.config.latent_dim
    assert info["training"]["steps"] == model.summary["steps"]
    assert list(back.uns["baselines"]["X_means"]["features"]) == [f"m{j}_mean" for j in range(5)]


def test_in_place_changes_survive_h5mu(model, tmp_path):
    mdata = two_modalities()
    raw = mdata.mod["prot"].X.copy()
    mst.pp.arcsinh(mdata, 5.0, mod="prot")
    mst.pp.filter_samples(mdata, "sample", 60, mod="prot")
    mst.tl.cell_attribution(mdata, model, "sample", mod="prot", progress=False)
    prot = mdata.mod["prot"]
    kept = prot.obs_names
    assert prot.n_obs < raw.shape[0] and mdata.n_obs == mdata.mod["rna"].n_obs  # rna kept
    path = tmp_path / "cohort.h5mu"
    mdata.write(path)
    back = md.read_h5mu(path)
    got = back.mod["prot"]
    assert list(got.obs_names) == list(kept)
    np.testing.assert_array_equal(got.X, prot.X)
    rows = pd.Index([f"c{i}" for i in range(raw.shape[0])]).get_indexer(kept)
    np.testing.assert_allclose(got.X, np.arcsinh(raw[rows] / 5.0), rtol=1e-6)
    assert list(got.uns["arcsinh"]["markers"]) == [f"m{j}" for j in range(5)]
    np.testing.assert_array_equal(
        got.obs["maestro_attribution"].to_numpy(), prot.obs["maestro_attribution"].to_numpy()
    )
    np.testing.assert_array_equal(back.mod["rna"].X, mdata.mod["rna"].X)
