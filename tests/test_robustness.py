"""Robustness (issue 9): messy and bad input, no silent mutation, and scale.

Every public function that reads cells either works on messy input or raises a
``ValueError``/``KeyError``/``TypeError`` whose message names the problem, never a raw numpy,
pandas or torch error and never a hang; functions without in-place semantics leave their input
byte-identical; a huge sample, a skewed cohort and a backed file stream. Save/load, resume,
Ctrl+C and determinism are pinned in ``test_train.py``. The table of bad inputs is
``docs/robustness.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from scipy import sparse

import maestro_sc as mst

from .conftest import EMBED_DIM, TINY, tiny_cohort

ALLOWED = (ValueError, KeyError, TypeError)
FAST = dict(preset="cpu", max_epochs=1, progress=False, **TINY)
# Derandomised and without an example database: CI runs the same examples every time.
PROPERTY = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
FLOATS = ("float32", "float64")

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:From 0.4 .update:FutureWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _feed(h, value) -> None:
    """Add ``value`` (arrays, frames, mappings, backed datasets, scalars) to the hash ``h``."""
    import h5py

    if isinstance(value, h5py.Dataset):
        value = value[()]
    elif hasattr(value, "to_memory") and hasattr(value, "format"):  # backed sparse
        value = value.to_memory()
    if value is None or isinstance(value, str | bytes | bool | int | float | np.generic):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    elif sparse.issparse(value):
        value = value.tocsr() if value.format not in ("csr", "csc") else value
        h.update(f"sparse:{value.format}{value.shape}{value.dtype};".encode())
        for part in (value.data, value.indices, value.indptr):
            _feed(h, part)
    elif isinstance(value, pd.DataFrame):
        h.update(b"frame;")
        _feed(h, value.index)
        _feed(h, value.columns)
        for col in value.columns:
            _feed(h, value[col])
    elif isinstance(value, pd.Series | pd.Index):
        h.update(f"{type(value).__name__}:{value.dtype}:{value.name!r};".encode())
        if isinstance(value.dtype, pd.CategoricalDtype):
            cat = value.cat if isinstance(value, pd.Series) else value
            _feed(h, cat.categories)
            _feed(h, np.asarray(cat.codes))
            h.update(str(cat.ordered).encode())
        else:
            _feed(h, value.to_numpy())
    elif isinstance(value, np.ndarray):
        h.update(f"array:{value.dtype}{value.shape};".encode())
        if value.dtype.hasobject:
            for item in value.ravel():
                _feed(h, item)
        else:
            h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping) or hasattr(value, "keys"):
        keys = sorted(value.keys(), key=str)
        h.update(f"mapping:{len(keys)};".encode())
        for key in keys:
            h.update(repr(key).encode())
            _feed(h, value[key])
    elif isinstance(value, list | tuple):
        h.update(f"{type(value).__name__}:{len(value)};".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(repr(value).encode())


def hash_adata(adata) -> str:
    """Digest of everything a user would notice changing: X, layers, obs, var, uns, obs*/var*."""
    h = hashlib.sha256()
    if type(adata).__name__ == "MuData":
        for name in sorted(adata.mod):
            h.update(f"mod:{name};".encode())
            h.update(hash_adata(adata.mod[name]).encode())
        for name in ("obs", "var", "uns", "obsm", "varm", "obsp"):
            h.update(name.encode())
            _feed(h, getattr(adata, name))
        return h.hexdigest()
    for name in ("X", "layers", "obs", "var", "uns", "obsm", "varm", "obsp", "varp"):
        h.update(name.encode())
        _feed(h, getattr(adata, name))
    _feed(h, adata.obs_names)
    _feed(h, adata.var_names)
    return h.hexdigest()


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Fail (TimeoutError, not an allowed type) instead of hanging."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise TimeoutError(f"the call ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def outcome(call, problem):
    """Run ``call``: it must succeed when ``problem`` is None, else raise ``problem``.

    ``problem`` is ``(exception type, message regex)``. Any other exception fails the test.
    """
    with contextlib.suppress(InvalidArgument):  # outside @given there are no statistics
        event("works" if problem is None else f"{problem[0].__name__}: {problem[1]}")
    with no_hang(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if problem is None:
            return call()
        with pytest.raises(problem[0], match=problem[1]):
            call()
    return None


def cells(n_samples: int = 4, n_cells: int = 30, seed: int = 0) -> ad.AnnData:
    """A small, clean cohort: m0..m4 markers, categorical ``sample`` and ``kind``."""
    return tiny_cohort(n_samples=n_samples, n_cells=n_cells, seed=seed)


def messy_cells() -> ad.AnnData:
    """Cells with layers, obsm, nested uns, var columns and several obs dtypes."""
    a = tiny_cohort(n_samples=8, n_cells=40)
    a.obs["cell_type"] = np.where(a.X[:, 0] > 0, "T", "B")
    a.obs["batch"] = pd.Categorical(np.where(a.obs["kind"] == "A", "b1", "b2"))
    a.obs["age"] = a.obs["sample"].cat.codes.astype(np.int64) * 3
    a.var["type"] = "marker"
    a.var["channel"] = [f"FL{j}" for j in range(a.n_vars)]
    a.layers["raw"] = a.X.copy() * 10
    a.obsm["X_pca"] = np.random.default_rng(1).normal(size=(a.n_obs, 3))
    a.uns["nested"] = {"numbers": np.arange(3), "text": "kept", "inner": {"x": 1.5}}
    return a


@pytest.fixture(scope="module")
def model():
    return mst.tl.pretrain(cells(n_samples=8), "sample", **FAST)


@pytest.fixture(scope="module")
def sdata_ref(model):
    a = messy_cells()
    return mst.tl.embed_samples(a, "sample", model=model, progress=False, umap=False)


# ---------------------------------------------------------------------------------------------
# generated AnnData: every messy shape the issue lists
# ---------------------------------------------------------------------------------------------

KEY_KINDS = ("str", "category", "int", "float", "unicode", "numeric_str")
SPECIALS = ("none", "nan", "inf", "negative", "huge", "huge64", "constant")
UNICODE = ("é", "患者", "🧪", "Ωmega", "naïve T", "ß ")


@st.composite
def cell_specs(
    draw,
    *,
    min_samples: int = 1,
    max_samples: int = 4,
    max_cells: int = 12,
    markers: tuple[int, int] = (1, 5),
    allow_empty: bool = True,
):
    """A description of an AnnData of cells (built by :func:`build_cells`)."""
    dtype = draw(st.sampled_from(["float32", "float64", "int32", "int64", "uint8"]))
    special = draw(st.sampled_from(SPECIALS))
    if dtype not in FLOATS and special in ("nan", "inf", "huge", "huge64"):
        special = "none"
    if dtype == "float32" and special == "huge64":
        special = "huge"
    n_markers = draw(st.integers(*markers))
    return {
        "sizes": draw(
            st.lists(st.integers(1, max_cells), min_size=min_samples, max_size=max_samples)
        ),
        "empty": allow_empty and draw(st.integers(0, 9)) == 7,
        "n_markers": n_markers,
        "dtype": dtype,
        "special": special,
        "layout": draw(st.sampled_from(["dense", "csr", "csc"])),
        "key": draw(st.sampled_from(KEY_KINDS)),
        "dup_obs": draw(st.booleans()),
        "dup_var": n_markers >= 2 and draw(st.integers(0, 6)) == 5,
        "backed": draw(st.integers(0, 3)) == 2,
        "seed": draw(st.integers(0, 2**16)),
    }


def sample_ids(spec) -> list:
    n = len(spec["sizes"])
    kind = spec["key"]
    if kind == "int":
        return [np.int64(10 * i) for i in range(n)]
    if kind == "float":
        return [i + 0.5 for i in range(n)]
    if kind == "unicode":
        return [f"{UNICODE[i % len(UNICODE)]}{i}" for i in range(n)]
    if kind == "numeric_str":
        return [str(i) for i in range(n)]
    return [f"s{i}" for i in range(n)]


def dense_values(spec) -> np.ndarray:
    rng = np.random.default_rng(spec["seed"])
    n = 0 if spec["empty"] else sum(spec["sizes"])
    d = spec["n_markers"]
    dtype = np.dtype(spec["dtype"])
    if spec["dtype"] in FLOATS:
        x = rng.normal(0, 3, (n, d)).astype(dtype)
    elif dtype == np.uint8:
        x = rng.integers(0, 256, (n, d)).astype(dtype)
    else:
        x = rng.integers(-1000, 1000, (n, d)).astype(dtype)
    special = spec["special"]
    if n == 0:
        return x
    if special == "nan":
        x[rng.integers(n), rng.integers(d)] = np.nan
    elif special == "inf":
        x[rng.integers(n), rng.integers(d)] = -np.inf if rng.integers(2) else np.inf
    elif special == "negative" and dtype != np.uint8:
        x = -np.abs(x) - 1
    elif special == "huge":
        x[:, 0] = x[:, 0] * 1e30
    elif special == "huge64":
        x[rng.integers(n), rng.integers(d)] = 1e300
    elif special == "constant":
        x[:, -1] = 7
    return x


def build_cells(spec, folder: Path) -> ad.AnnData:
    x = dense_values(spec)
    n, d = x.shape
    labels = np.repeat(np.asarray(sample_ids(spec), dtype=object), spec["sizes"])[:n]
    obs = pd.DataFrame({"sample": list(labels)})
    if spec["key"] == "category":
        obs["sample"] = pd.Categorical(obs["sample"], categories=[*sample_ids(spec), "unused"])
    elif spec["key"] in ("int", "float"):
        obs["sample"] = pd.to_numeric(obs["sample"])
    obs.index = ["dup"] * n if spec["dup_obs"] else [f"c{i}" for i in range(n)]
    var_names = [f"m{j}" for j in range(d)]
    if spec["dup_var"]:
        var_names[1] = var_names[0]
    matrix = {"dense": x, "csr": sparse.csr_matrix(x), "csc": sparse.csc_matrix(x)}[spec["layout"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.AnnData(matrix, obs=obs, var=pd.DataFrame(index=var_names))
        if spec["backed"]:
            path = folder / f"{uuid.uuid4().hex}.h5ad"
            adata.write_h5ad(path)
            adata = ad.read_h5ad(path, backed="r")
    return adata


def data_problem(spec, *, values: bool = True, float32: bool = False):
    """The error the input checks must give for ``spec`` (in the order they run), or None."""
    if spec["empty"]:
        return ValueError, "empty"
    if spec["dup_var"]:
        return ValueError, "duplicated"
    if values and spec["special"] in ("nan", "inf"):
        return ValueError, "NaN/inf"
    if values and float32 and spec["special"] == "huge64":
        return ValueError, "too large for float32"
    return None


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("generated")


@settings(max_examples=80, **PROPERTY)
@given(spec=cell_specs(), cofactor=st.sampled_from([1, 5.0, 150.0, np.float32(0.5)]))
def test_property_arcsinh(spec, cofactor, folder):
    adata = build_cells(spec, folder)
    before = hash_adata(adata)
    out = outcome(lambda: mst.pp.arcsinh(adata, cofactor, copy=True), data_problem(spec))
    assert hash_adata(adata) == before
    if out is None:
        return
    x = dense_values(spec)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
    expected = np.arcsinh(x.astype(dtype) / dtype.type(cofactor))
    got = out.X.toarray() if sparse.issparse(out.X) else np.asarray(out.X)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got.dtype == dtype
    if not spec["backed"]:
        assert mst.pp.arcsinh(adata, cofactor) is None
        in_place = adata.X.toarray() if sparse.issparse(adata.X) else adata.X
        np.testing.assert_array_equal(in_place, got)
    else:
        outcome(lambda: mst.pp.arcsinh(adata, cofactor), (ValueError, "backed"))


@settings(max_examples=80, **PROPERTY)
@given(spec=cell_specs(max_samples=5))
def test_property_aggregate_samples(spec, folder):
    adata = build_cells(spec, folder)
    before = hash_adata(adata)
    problem = data_problem(spec, float32=True)
    sdata = outcome(lambda: mst.tl.aggregate_samples(adata, "sample"), problem)
    assert hash_adata(adata) == before
    if sdata is None:
        return
    ids = [str(s) for s in sample_ids(spec)]
    assert list(sdata.obs_names) == ids
    assert sdata.obs["n_cells"].tolist() == spec["sizes"]
    x = dense_values(spec).astype(np.float32).astype(np.float64)
    bounds = np.cumsum([0, *spec["sizes"]])
    means = np.stack([x[a:b].mean(axis=0) for a, b in itertools.pairwise(bounds)])
    np.testing.assert_allclose(sdata.X, means.astype(np.float32), rtol=1e-5, atol=1e-5)
    assert np.isfinite(sdata.X).all()


@settings(max_examples=80, **PROPERTY)
@given(spec=cell_specs(max_samples=5), min_cells=st.integers(0, 14))
def test_property_filter_samples(spec, min_cells, folder):
    adata = build_cells(spec, folder)
    before = hash_adata(adata)
    problem = data_problem(spec, values=False)
    if problem is None and max(spec["sizes"]) < min_cells:
        problem = (ValueError, "No sample has at least")
    out = outcome(lambda: mst.pp.filter_samples(adata, "sample", min_cells, copy=True), problem)
    assert hash_adata(adata) == before
    if out is None:
        return
    kept = [str(s) for s, n in zip(sample_ids(spec), spec["sizes"]) if n >= min_cells]
    assert sorted(set(out.obs["sample"].astype(str))) == sorted(kept)
    assert out.n_obs == sum(n for n in spec["sizes"] if n >= min_cells)


@settings(max_examples=80, **PROPERTY)
@given(spec=cell_specs(max_samples=5), n_cells=st.integers(1, 14), seed=st.integers(0, 2**32 - 1))
def test_property_subsample(spec, n_cells, seed, folder):
    adata = build_cells(spec, folder)
    before = hash_adata(adata)
    problem = data_problem(spec, values=False)
    out = outcome(
        lambda: mst.pp.subsample(adata, "sample", n_cells, random_state=seed, copy=True), problem
    )
    assert hash_adata(adata) == before
    if out is None:
        return
    counts = out.obs["sample"].astype(str).value_counts()
    for sid, size in zip(sample_ids(spec), spec["sizes"]):
        assert counts[str(sid)] == min(size, n_cells)


@settings(max_examples=80, **PROPERTY)
@given(spec=cell_specs(markers=(1, 6)), data=st.data())
def test_property_select_markers(spec, data, folder):
    adata = build_cells(spec, folder)
    before = hash_adata(adata)
    names = list(dict.fromkeys(str(v) for v in adata.var_names))
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    problem = data_problem(spec, values=False)
    out = outcome(lambda: mst.pp.select_markers(adata, chosen, copy=True), problem)
    assert hash_adata(adata) == before
    if out is not None:
        assert list(out.var_names) == chosen
        assert out.n_obs == adata.n_obs


@settings(max_examples=3, **PROPERTY)
@given(spec=cell_specs(min_samples=1, max_samples=4, max_cells=30, markers=(2, 4)))
def test_property_pretrain_and_embed(spec, folder):
    adata = build_cells(spec, folder)
    before = hash_adata(adata)
    problem = data_problem(spec, float32=True)
    if problem is None and len(spec["sizes"]) < 2:
        problem = (ValueError, "at least 2 samples")
    sdata = outcome(
        lambda: mst.tl.embed_samples(
            adata, "sample", min_cells=1, neighbors=False, umap=False, **FAST
        ),
        problem,
    )
    assert hash_adata(adata) == before
    if sdata is not None:
        assert list(sdata.obs_names) == [str(s) for s in sample_ids(spec)]
        z = sdata.obsm["X_maestro"]
        assert z.shape == (len(spec["sizes"]), EMBED_DIM) and np.isfinite(z).all()


@settings(max_examples=10, **PROPERTY)
@given(spec=cell_specs(markers=(5, 6), max_samples=6), neighbors=st.booleans())
def test_property_embed_with_model(spec, neighbors, model, folder):
    """A trained model embeds any messy cohort with its panel (extra markers are ignored)."""
    adata = build_cells(spec, folder)
    before = hash_adata(adata)
    problem = data_problem(spec, float32=True)
    used = dense_values(spec)[:, :5]
    if problem and "NaN" in problem[1] and np.isfinite(used).all():
        problem = None  # only the model's markers are read and checked
    if problem and "float32" in problem[1] and (np.abs(used) <= 1e38).all():
        problem = None
    if problem is None and spec["special"] == "huge":
        # 1e30 is far outside the range the model was trained on.
        problem = (ValueError, "not finite")
    sdata = outcome(
        lambda: mst.tl.embed_samples(
            adata, "sample", model=model, neighbors=neighbors, umap=False, progress=False
        ),
        problem,
    )
    assert hash_adata(adata) == before
    if sdata is not None:
        z = sdata.obsm["X_maestro"]
        assert z.shape == (len(spec["sizes"]), EMBED_DIM) and np.isfinite(z).all()
        ref = model.embed(adata, "sample", progress=False).to_numpy()
        np.testing.assert_array_equal(z, ref.astype(np.float32))


@st.composite
def probe_specs(draw):
    n = draw(st.integers(1, 16))
    return {
        "n": n,
        "dims": draw(st.integers(1, 4)),
        "rep": draw(
            st.sampled_from(
                ["normal", "int", "csr", "constant", "huge", "normal", "nan", "inf", "huge300"]
            )
        ),
        "target": draw(
            st.sampled_from(["classes", "one_class", "numeric", "numeric_nan", "bool", "text"])
        ),
        "n_splits": draw(st.integers(2, 6)),
        "seed": draw(st.integers(0, 2**16)),
    }


def build_sdata(spec) -> ad.AnnData:
    rng = np.random.default_rng(spec["seed"])
    n, d = spec["n"], spec["dims"]
    rep = rng.normal(size=(n, d))
    kind = spec["rep"]
    if kind == "nan":
        rep[rng.integers(n), rng.integers(d)] = np.nan
    elif kind == "inf":
        rep[rng.integers(n), rng.integers(d)] = np.inf
    elif kind == "huge":
        rep *= 1e30
    elif kind == "huge300":
        rep *= 1e300
    elif kind == "constant":
        rep[:] = 2.0
    elif kind == "int":
        rep = (rep * 10).astype(np.int64)
    elif kind == "csr":
        rep = sparse.csr_matrix(np.where(np.abs(rep) > 1, rep, 0))
    target = spec["target"]
    if target == "classes":
        y = pd.Categorical(rng.choice(["a", "b", "c"], size=n))
    elif target == "one_class":
        y = pd.Categorical(["a"] * n)
    elif target == "numeric":
        y = rng.normal(size=n)
    elif target == "numeric_nan":
        y = np.where(rng.random(n) < 0.3, np.nan, rng.normal(size=n))
    elif target == "bool":
        y = rng.random(n) < 0.5
    else:
        y = rng.choice(["x", "y"], size=n).astype(object)
    sdata = ad.AnnData(np.zeros((n, 1), dtype=np.float32))
    sdata.obs_names = [f"s{i}" for i in range(n)]
    sdata.obs["y"] = y
    sdata.obsm["X_rep"] = rep
    return sdata


def probe_problem(spec, sdata):
    if spec["rep"] in ("nan", "inf"):
        return ValueError, "NaN/inf"
    if spec["rep"] == "huge300":
        return ValueError, "too large"
    y = sdata.obs["y"]
    kept = y[~y.isna()]
    if len(kept) < 4:
        return ValueError, "need at least 4"
    if spec["target"] in ("numeric", "numeric_nan"):
        return None
    counts = kept.astype(str).value_counts()
    if len(counts) < 2:
        return ValueError, "single class"
    if counts.min() < 2:
        return ValueError, "at least 2 per class"
    return None


@settings(max_examples=50, **PROPERTY)
@given(spec=probe_specs())
def test_property_linear_probe(spec):
    sdata = build_sdata(spec)
    before = hash_adata(sdata)
    table = outcome(
        lambda: mst.tl.linear_probe(
            sdata, "y", use_rep="X_rep", n_splits=spec["n_splits"], n_repeats=1, inplace=False
        ),
        probe_problem(spec, sdata),
    )
    assert hash_adata(sdata) == before
    if table is None:
        return
    metrics = table.set_index("metric")["mean"]
    if spec["target"] in ("numeric", "numeric_nan"):
        assert np.isfinite(metrics["mae"])
    else:
        assert 0.0 <= metrics["accuracy"] <= 1.0


def _fcs_bytes() -> bytes:
    import io

    flowio = pytest.importorskip("flowio")
    data = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    buf = io.BytesIO()
    flowio.create_fcs(
        buf,
        data.ravel().tolist(),
        ["FSC-A", "FL1-A", "FL2-A"],
        opt_channel_names=["FSC-A", "CD3", "CD4"],
    )
    return buf.getvalue()


@settings(max_examples=60, **PROPERTY)
@given(
    cut=st.integers(0, 2000),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
    noise=st.binary(max_size=300),
    mode=st.sampled_from(["truncate", "flip", "random", "fcs_header_then_noise"]),
)
def test_property_read_fcs_untrusted_bytes(cut, flips, noise, mode, folder):
    """Truncated, corrupted or random files give a ValueError (or a correct AnnData)."""
    good = _fcs_bytes()
    if mode == "truncate":
        data = good[: cut % len(good)]
    elif mode == "flip":
        buf = bytearray(good)
        for pos, byte in flips:
            buf[pos % len(buf)] = byte
        data = bytes(buf)
    elif mode == "random":
        data = noise
    else:
        data = b"FCS3.1    " + noise
    path = folder / f"{uuid.uuid4().hex}.fcs"
    path.write_bytes(data)
    with no_hang(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            adata = mst.io.read_fcs(path)
        except ValueError as err:
            assert path.name in str(err)
            return
    assert adata.n_vars >= 1 and adata.X.dtype == np.float32
    assert adata.obs["sample"].astype(str).unique().tolist() == [path.stem]


# ---------------------------------------------------------------------------------------------
# explicit bad inputs: the table of docs/robustness.md
# ---------------------------------------------------------------------------------------------


def _edit(fn, **kw):
    a = cells(**kw)
    fn(a)
    return a


def _set_x(value):
    def edit(a):
        a.X = value(a)

    return lambda: _edit(edit)


def _nan(a):
    a.X[3, 1] = np.nan


def _inf(a):
    a.X[0, 0] = np.inf


def _sparse_nan(a):
    a.X = sparse.csr_matrix(a.X)
    a.X.data[5] = np.nan


def _huge64(a):
    a.X = a.X.astype(np.float64)
    a.X[0, 2] = 1e300


def _nan_key(a):
    a.obs["sample"] = a.obs["sample"].astype(object)
    a.obs.iloc[0, a.obs.columns.get_loc("sample")] = None


def _colliding_key(a):
    a.obs["sample"] = [1 if i < 40 else "1" for i in range(a.n_obs)]


def _dup_var(a):
    a.var_names = ["m0", "m0", "m2", "m3", "m4"]


def _mudata(two: bool = True):
    import mudata as md

    prot = cells()
    mods = {"prot": prot}
    if two:
        mods["rna"] = ad.AnnData(
            np.zeros((prot.n_obs, 2), np.float32), obs=pd.DataFrame(index=prot.obs_names)
        )
    return md.MuData(mods)


def _backed(tmp_path: Path):
    path = tmp_path / "cells.h5ad"
    cells().write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


def _sdata(n: int = 12, *, rep=None, y=None):
    rng = np.random.default_rng(0)
    s = ad.AnnData(np.zeros((n, 1), np.float32))
    s.obs_names = [f"s{i}" for i in range(n)]
    s.obsm["X_rep"] = rng.normal(size=(n, 3)) if rep is None else rep
    s.obs["y"] = pd.Categorical(["a", "b"] * (n // 2)) if y is None else y
    return s


def _cuda_only(call):
    def run(tmp_path, model):
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        call()

    return run


def _fcs_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "broken.fcs"
    path.write_bytes(content)
    return path


agg = mst.tl.aggregate_samples

# (id, call(tmp_path, model), exception, message fragment)
BAD_INPUTS = [
    ("not an AnnData", lambda t, m: agg(np.ones((4, 3)), "sample"), TypeError, "Expected an AnnData"),
    ("None as data", lambda t, m: mst.pp.arcsinh(None), TypeError, "Expected an AnnData"),
    ("zero cells", lambda t, m: agg(cells()[:0].copy(), "sample"), ValueError, "empty"),
    ("zero markers", lambda t, m: mst.pp.arcsinh(cells()[:, :0].copy()), ValueError, "empty"),
    ("sample_key missing", lambda t, m: agg(cells(), "donor"), KeyError, "Available columns"),
    ("sample_key not a str", lambda t, m: agg(cells(), 3), TypeError, "sample_key"),
    ("sample_key None", lambda t, m: agg(cells(), None), TypeError, "sample_key"),
    ("NaN sample id", lambda t, m: agg(_edit(_nan_key), "sample"), ValueError, "no sample id"),
    ("ids collide as text", lambda t, m: agg(_edit(_colliding_key), "sample"), ValueError, "collide"),
    ("NaN value", lambda t, m: agg(_edit(_nan), "sample"), ValueError, r"NaN/inf.*m1"),
    ("inf value", lambda t, m: mst.pp.arcsinh(_edit(_inf)), ValueError, r"NaN/inf.*m0"),
    ("NaN in sparse X", lambda t, m: agg(_edit(_sparse_nan), "sample"), ValueError, "NaN/inf"),
    ("float64 beyond float32", lambda t, m: agg(_edit(_huge64), "sample"), ValueError, "too large for float32"),
    ("text matrix", lambda t, m: agg(_set_x(lambda a: a.X.astype(str))(), "sample"), TypeError, "not numeric"),
    ("complex matrix", lambda t, m: agg(_set_x(lambda a: a.X.astype(np.complex64))(), "sample"), TypeError, "complex"),
    ("X is None", lambda t, m: mst.pp.arcsinh(_set_x(lambda a: None)()), TypeError, "no dtype"),
    ("duplicated var_names", lambda t, m: agg(_edit(_dup_var), "sample"), ValueError, "var_names_make_unique"),
    ("markers as a string", lambda t, m: agg(cells(), "sample", markers="m0"), TypeError, "not a string"),
    ("unknown markers", lambda t, m: agg(cells(), "sample", markers=["CD3"]), KeyError, "Unknown markers"),
    ("marker listed twice", lambda t, m: agg(cells(), "sample", markers=["m0", "m0"]), ValueError, "twice"),
    ("empty marker list", lambda t, m: mst.pp.select_markers(cells(), []), ValueError, "is empty"),
    ("unknown layer", lambda t, m: agg(cells(), "sample", layer="raw"), KeyError, "Available layers"),
    ("backed, in place", lambda t, m: mst.pp.arcsinh(_backed(t)), ValueError, "copy=True"),
    ("cofactor 0", lambda t, m: mst.pp.arcsinh(cells(), 0), ValueError, "finite and > 0"),
    ("cofactor text", lambda t, m: mst.pp.arcsinh(cells(), "5"), TypeError, "cofactor"),
    ("cofactor dict misses markers", lambda t, m: mst.pp.arcsinh(cells(), {"m0": 5}, markers=["m0", "m1"]), KeyError, r"\['m1'\]"),
    ("min_cells above every sample", lambda t, m: mst.pp.filter_samples(cells(), "sample", 10**6), ValueError, "No sample has at least"),
    ("min_cells negative", lambda t, m: mst.pp.filter_samples(cells(), "sample", -1), ValueError, "min_cells"),
    ("n_cells 0", lambda t, m: mst.pp.subsample(cells(), "sample", 0), ValueError, "n_cells"),
    ("negative seed", lambda t, m: mst.pp.subsample(cells(), "sample", 5, random_state=-1), ValueError, "random_state"),
    ("seed as text", lambda t, m: mst.pp.subsample(cells(), "sample", 5, random_state="0"), TypeError, "random_state"),
    ("no marker left", lambda t, m: mst.pp.select_markers(cells(), exclude_patterns=["m"]), ValueError, "No marker left"),
    ("unknown var_column", lambda t, m: mst.pp.select_markers(cells(), var_column="type"), KeyError, "var_column"),
    ("exclude_patterns not text", lambda t, m: mst.pp.select_markers(cells(), exclude_patterns=[1]), TypeError, "exclude_patterns"),
    ("panels share no marker", lambda t, m: mst.pp.harmonize_panels([cells(), _edit(lambda a: setattr(a, "var_names", list("abcde")))]), ValueError, "share no marker"),
    ("every sample below min_cells", lambda t, m: mst.tl.pretrain(cells(), "sample", min_cells=1000, **FAST), ValueError, "at least 2 samples"),
    ("max_epochs as text", lambda t, m: mst.tl.pretrain(cells(), "sample", **{**FAST, "max_epochs": "2"}), TypeError, "max_epochs"),
    ("batch_size 0", lambda t, m: mst.tl.pretrain(cells(), "sample", **{**FAST, "batch_size": 0}), ValueError, "batch_size"),
    ("training seed negative", lambda t, m: mst.tl.pretrain(cells(), "sample", random_state=-1, **FAST), ValueError, "random_state"),
    ("unknown accelerator", lambda t, m: mst.tl.pretrain(cells(), "sample", accelerator="tpu", **FAST), ValueError, "accelerator"),
    ("GPU asked, none there", _cuda_only(lambda: mst.tl.pretrain(cells(), "sample", accelerator="gpu", **FAST)), ValueError, "CUDA"),
    ("which unknown", lambda t, m: mst.tl.embed_samples(cells(), "sample", model=m, which="both"), ValueError, "which"),
    ("n_neighbors 1", lambda t, m: mst.tl.embed_samples(cells(), "sample", model=m, n_neighbors=1), ValueError, "n_neighbors"),
    ("key_added not text", lambda t, m: mst.tl.embed_samples(cells(), "sample", model=m, key_added=3), TypeError, "key_added"),
    ("chunk_size 0", lambda t, m: m.embed(cells(), "sample", chunk_size=0), ValueError, "chunk_size"),
    ("panel lacks model markers", lambda t, m: m.embed(cells()[:, 1:].copy(), "sample"), KeyError, r"lack the model's markers \['m0'\]"),
    ("MuData, several modalities, no mod", lambda t, m: agg(_mudata(), "sample"), ValueError, r"\['prot', 'rna'\]"),
    ("MuData, unknown mod", lambda t, m: agg(_mudata(), "sample", mod="protein"), KeyError, "Available modalities"),
    ("mod given for an AnnData", lambda t, m: agg(cells(), "sample", mod="prot"), TypeError, "only for MuData"),
    ("representation with NaN", lambda t, m: mst.tl.linear_probe(_sdata(rep=np.full((12, 2), np.nan)), "y", use_rep="X_rep"), ValueError, "NaN/inf"),
    ("representation 1e300", lambda t, m: mst.tl.linear_probe(_sdata(rep=np.full((12, 2), 1e300)), "y", use_rep="X_rep"), ValueError, "too large"),
    ("unknown use_rep", lambda t, m: mst.tl.linear_probe(_sdata(), "y", use_rep="X_pca"), KeyError, "not in sdata.obsm"),
    ("fewer than 4 samples", lambda t, m: mst.tl.linear_probe(_sdata(2), "y", use_rep="X_rep"), ValueError, "need at least 4"),
    ("a single class", lambda t, m: mst.tl.linear_probe(_sdata(y=["a"] * 12), "y", use_rep="X_rep"), ValueError, "single class"),
    ("class of one sample", lambda t, m: mst.tl.linear_probe(_sdata(y=["a"] * 11 + ["b"]), "y", use_rep="X_rep"), ValueError, r"Class 'b'.*at least 2 per class"),
    ("C negative", lambda t, m: mst.tl.linear_probe(_sdata(), "y", use_rep="X_rep", C=-1.0), ValueError, "`C`"),
    ("regression target inf", lambda t, m: mst.tl.linear_probe(_sdata(y=[np.inf] + [0.5] * 11), "y", use_rep="X_rep"), ValueError, "holds inf"),
    ("text target, regression", lambda t, m: mst.tl.linear_probe(_sdata(), "y", use_rep="X_rep", task="regression"), TypeError, "not numeric"),
    ("not an FCS file", lambda t, m: mst.io.read_fcs(_fcs_file(t, b"plain text, not cytometry")), ValueError, "not an FCS file"),
    ("empty FCS file", lambda t, m: mst.io.read_fcs(_fcs_file(t, b"")), ValueError, "broken.fcs"),
    ("FCS header, then noise", lambda t, m: mst.io.read_fcs(_fcs_file(t, b"FCS3.1    " + bytes(range(256)))), ValueError, "Cannot read FCS file"),
    ("FCS cut short", lambda t, m: mst.io.read_fcs(_fcs_file(t, _fcs_bytes()[:-100])), ValueError, "past the end"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [pytest.param(call, err, frag, id=name) for name, call, err, frag in BAD_INPUTS],
)
def test_bad_input(call, error, fragment, tmp_path, model):
    with no_hang(), pytest.raises(error, match=fragment) as info:
        call(tmp_path, model)
    # The message says what to do, not only what is wrong: at least a sentence.
    assert len(str(info.value)) > 25


def test_bad_embed_arguments_fail_before_training(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("pretrain ran before the arguments were checked")

    # embed_samples trains through _pretrain (pretrain's body), so that is what must not run.
    monkeypatch.setattr(mst.tl._embed, "_pretrain", no_training)
    for kwargs, error in [
        ({"which": "both"}, ValueError),
        ({"n_neighbors": 0}, ValueError),
        ({"chunk_size": -1}, ValueError),
        ({"key_added": ""}, TypeError),
        ({"random_state": -3}, ValueError),
    ]:
        with pytest.raises(error):
            mst.tl.embed_samples(cells(), "sample", progress=False, **kwargs)


def test_messy_inputs_that_work(model, tmp_path):
    """Shapes that are unusual but valid give correct results."""
    # Unicode sample ids keep their text; one cell per sample is embedded.
    ids = ["患者-1", "🧪", "naïve T", "ß"]
    a = cells()[:4].copy()
    a.obs["sample"] = ids
    sdata = mst.tl.embed_samples(a, "sample", model=model, progress=False, umap=False)
    assert list(sdata.obs_names) == ids and sdata.obs["n_cells"].tolist() == [1] * 4
    # Integer ids become their text.
    b = cells()
    b.obs["sample"] = b.obs["sample"].cat.codes.astype(np.int64) * 10
    assert list(mst.tl.aggregate_samples(b, "sample").obs_names) == ["0", "10", "20", "30"]
    # Unhashable obs values (lists) do not break the sample table: the column is dropped.
    b = cells()
    b.obs["tags"] = [["x"] for _ in range(b.n_obs)]
    out = mst.tl.aggregate_samples(b, "sample")
    assert "tags" not in out.obs and "tags" in list(out.uns["maestro"]["dropped_obs"])
    # Duplicated obs names, values of 1e30 and a constant marker: trains and embeds, finite.
    c = cells()
    c.obs_names = ["same"] * c.n_obs
    c.X[:, 0] *= 1e30
    c.X[:, 4] = 3
    with pytest.warns(UserWarning, match=r"m4.*constant"):
        trained = mst.tl.pretrain(c, "sample", **FAST)
    assert np.isfinite(trained.embed(c, "sample", progress=False).to_numpy()).all()
    # A model trained on values near 1 refuses to return NaN for values of 1e30.
    with pytest.raises(ValueError, match=r"not finite.*'s0'"):
        model.embed(c, "sample", progress=False)
    # MuData's "mod:column" names a modality's column even when mudata does not pull it.
    mdata = _mudata()
    mdata.obs = mdata.obs.drop(columns=[c for c in mdata.obs.columns if c.startswith("prot:")])
    out = mst.tl.aggregate_samples(mdata, "prot:sample", mod="prot")
    assert list(out.obs_names) == [f"s{i}" for i in range(4)]


def test_neighbour_graph_keeps_torch_threads(model):
    """numba (behind scanpy's neighbours) shares torch's OpenMP threads; the count is kept.

    Otherwise the same model embeds the same cells with different last bits before and after
    the first ``embed_samples`` call of a session.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        adata = cells(n_samples=6)
        z1 = model.embed(adata, "sample", progress=False).to_numpy()
        mst.tl.embed_samples(adata, "sample", model=model, progress=False)
        assert torch.get_num_threads() == 1
        np.testing.assert_array_equal(model.embed(adata, "sample", progress=False).to_numpy(), z1)
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# no silent mutation
# ---------------------------------------------------------------------------------------------


def _spill():
    return pd.DataFrame([[1.0, 0.1], [0.05, 1.0]], index=["m0", "m1"], columns=["m0", "m1"])


CELL_CALLS = {
    "aggregate_samples": lambda a, m, s: mst.tl.aggregate_samples(a, "sample"),
    "aggregate_samples(layer, markers)": lambda a, m, s: mst.tl.aggregate_samples(
        a, "sample", layer="raw", markers=["m3", "m1"]
    ),
    "pretrain": lambda a, m, s: mst.tl.pretrain(a, "sample", **FAST),
    "embed_samples(model)": lambda a, m, s: mst.tl.embed_samples(
        a, "sample", model=m, progress=False, umap=False
    ),
    "MaestroModel.embed": lambda a, m, s: m.embed(a, "sample", progress=False),
    "cell_attribution(copy)": lambda a, m, s: mst.tl.cell_attribution(
        a, m, "sample", copy=True, progress=False
    ),
    "baseline_means": lambda a, m, s: mst.tl.baseline_means(a, "sample"),
    "baseline_quantiles": lambda a, m, s: mst.tl.baseline_quantiles(a, "sample"),
    "baseline_kmeans": lambda a, m, s: mst.tl.baseline_kmeans(a, "sample", n_clusters=4),
    "baseline_flowsom": lambda a, m, s: mst.tl.baseline_flowsom(
        a, "sample", n_clusters=3, xdim=3, ydim=3, rlen=2
    ),
    "baseline_gated": lambda a, m, s: mst.tl.baseline_gated(a, "sample", "cell_type"),
    "add_baselines(cells)": lambda a, m, s: mst.tl.add_baselines(
        s.copy(), a, "sample", methods=["means", "kmeans4"]
    ),
    "celltype_retrieval(cells)": lambda a, m, s: mst.tl.celltype_retrieval(
        s.copy(), a, "sample", "cell_type", n_splits=2
    ),
    "pp.arcsinh(copy)": lambda a, m, s: mst.pp.arcsinh(a, 5, copy=True),
    "pp.arcsinh(copy, layer)": lambda a, m, s: mst.pp.arcsinh(a, 5, layer="raw", copy=True),
    "pp.filter_samples(copy)": lambda a, m, s: mst.pp.filter_samples(a, "sample", 45, copy=True),
    "pp.subsample(copy)": lambda a, m, s: mst.pp.subsample(a, "sample", 10, copy=True),
    "pp.select_markers(copy)": lambda a, m, s: mst.pp.select_markers(a, ["m2", "m0"], copy=True),
    "pp.normalize_batches(copy)": lambda a, m, s: mst.pp.normalize_batches(
        a, "batch", method="standardize", copy=True
    ),
    "pp.compensate(copy)": lambda a, m, s: mst.pp.compensate(a, _spill(), copy=True),
    "pp.harmonize_panels": lambda a, m, s: mst.pp.harmonize_panels([a, a[:, 1:].copy()]),
}


@pytest.mark.parametrize("name", list(CELL_CALLS))
def test_no_silent_mutation_of_cells(name, model, sdata_ref):
    adata = messy_cells()
    before = hash_adata(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CELL_CALLS[name](adata, model, sdata_ref)
    assert hash_adata(adata) == before, f"{name} changed its input"


SAMPLE_CALLS = {
    "linear_probe(inplace=False)": lambda s: mst.tl.linear_probe(
        s, "kind", use_rep="X_maestro", n_splits=2, n_repeats=1, inplace=False
    ),
    "nn_contingency(inplace=False)": lambda s: mst.tl.nn_contingency(
        s, "kind", use_rep="X_maestro", inplace=False
    ),
    "celltype_retrieval(inplace=False)": lambda s: mst.tl.celltype_retrieval(
        s, messy_cells(), "sample", "cell_type", n_splits=2, inplace=False
    ),
}


@pytest.mark.parametrize("name", list(SAMPLE_CALLS))
def test_no_silent_mutation_of_sample_table(name, sdata_ref):
    sdata = sdata_ref.copy()
    before = hash_adata(sdata)
    SAMPLE_CALLS[name](sdata)
    assert hash_adata(sdata) == before


def test_no_silent_mutation_of_backed_files_and_mudata(tmp_path, model):
    path = tmp_path / "cells.h5ad"
    messy_cells().write_h5ad(path)
    file_bytes = hashlib.sha256(path.read_bytes()).hexdigest()
    backed = ad.read_h5ad(path, backed="r")
    before = hash_adata(backed)
    mst.tl.aggregate_samples(backed, "sample")
    mst.pp.subsample(backed, "sample", 10, copy=True)
    mst.pp.arcsinh(backed, 5, copy=True)
    mst.tl.embed_samples(backed, "sample", model=model, progress=False, umap=False)
    assert hash_adata(backed) == before and backed.isbacked
    backed.file.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == file_bytes

    mdata = _mudata()
    before = hash_adata(mdata)
    mst.pp.arcsinh(mdata, 5, mod="prot", copy=True)
    mst.pp.filter_samples(mdata, "sample", 33, mod="prot", copy=True)
    mst.tl.aggregate_samples(mdata, "sample", mod="prot")
    mst.tl.embed_samples(mdata, "sample", model=model, mod="prot", progress=False, umap=False)
    assert hash_adata(mdata) == before


def test_hash_adata_sees_every_kind_of_change():
    base = messy_cells()
    ref = hash_adata(base)
    assert hash_adata(base.copy()) == ref
    edits = [
        lambda a: a.X.__setitem__((0, 0), a.X[0, 0] + 1),
        lambda a: a.layers["raw"].__setitem__((1, 1), 0.0),
        lambda a: a.obs.__setitem__("new", 1),
        lambda a: setattr(a, "obs", a.obs.assign(sample=a.obs["sample"].cat.as_ordered())),
        lambda a: a.var.__setitem__("type", "other"),
        lambda a: a.uns["nested"]["inner"].__setitem__("x", 2.0),
        lambda a: a.obsm.__setitem__("X_new", np.zeros((a.n_obs, 1))),
        lambda a: setattr(a, "obs_names", [f"x{i}" for i in range(a.n_obs)]),
    ]  # fmt: skip
    for edit in edits:
        changed = base.copy()
        edit(changed)
        assert hash_adata(changed) != ref


# ---------------------------------------------------------------------------------------------
# scale: streaming, bounded memory
# ---------------------------------------------------------------------------------------------


class PeakRSS:
    """Peak resident memory above the level at entry, polled every 5 ms in a thread."""

    def __enter__(self):
        psutil = pytest.importorskip("psutil")
        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return False

    @property
    def growth(self) -> int:
        return self.peak - self.base


def _big_cells(sizes, n_markers, seed=0):
    rng = np.random.default_rng(seed)
    n = int(sum(sizes))
    x = rng.standard_normal((n, n_markers), dtype=np.float32)
    ids = [f"s{i}" for i in range(len(sizes))]
    obs = pd.DataFrame(
        {"sample": pd.Categorical(np.repeat(ids, sizes), categories=ids)},
        index=pd.RangeIndex(n).astype(str),
    )
    var = pd.DataFrame(index=[f"m{j}" for j in range(n_markers)])
    return ad.AnnData(x, obs=obs, var=var)


@pytest.mark.slow
def test_two_million_cell_sample_embeds_in_bounded_memory():
    small = _big_cells([150] * 8, 10)
    model = mst.tl.pretrain(small, "sample", **FAST)
    big = _big_cells([2_000_000], 10, seed=1)
    model.embed(big[:1000].copy(), "sample", progress=False)  # warm the kernels
    with PeakRSS() as mem:
        z = model.embed(big, "sample", progress=False)
    assert z.shape == (1, EMBED_DIM) and np.isfinite(z.to_numpy()).all()
    assert mem.growth < 2 * 2**30, f"embedding 2e6 cells took {mem.growth / 2**20:.0f} MB"


@pytest.mark.slow
def test_one_sample_hundred_times_larger_trains_and_embeds():
    adata = _big_cells([200] * 7 + [20_000], 8)
    model = mst.tl.pretrain(adata, "sample", **FAST)
    assert model.summary["n_samples"] == 8 and np.isfinite(model.history["loss"]).all()
    sdata = mst.tl.embed_samples(
        adata, "sample", model=model, progress=False, neighbors=False, umap=False
    )
    assert sdata.obs.loc["s7", "n_cells"] == 20_000
    assert np.isfinite(sdata.obsm["X_maestro"]).all()


@pytest.mark.slow
def test_backed_file_is_streamed_not_loaded(tmp_path, monkeypatch):
    import h5py

    # 8 samples x 150k cells x 20 markers: 96 MB of float32 on disk. Training reads a pooled
    # subsample (200k cells) and blocks of rows; embedding reads one sample at a time.
    adata = _big_cells([150_000] * 8, 20, seed=2)
    dense_bytes = adata.X.nbytes
    path = tmp_path / "big.h5ad"
    adata.write_h5ad(path)
    del adata
    # Import torch, Lightning and scanpy and compile the neighbour graph's kernels first.
    warm = _big_cells([100] * 4, 20)
    mst.tl.embed_samples(warm, "sample", umap=False, **FAST)

    largest = [0]
    read = h5py.Dataset.__getitem__

    def recording_read(self, key):
        out = read(self, key)
        largest[0] = max(largest[0], getattr(out, "nbytes", 0))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording_read)
    backed = ad.read_h5ad(path, backed="r")
    with PeakRSS() as mem:
        model = mst.tl.pretrain(backed, "sample", teacher_max_cells=2048, **FAST)
        sdata = mst.tl.embed_samples(backed, "sample", model=model, progress=False, umap=False)
    assert backed.isbacked and isinstance(backed.X, h5py.Dataset)
    assert np.isfinite(sdata.obsm["X_maestro"]).all() and sdata.n_obs == 8
    # Every read is a block or a sample, never the whole matrix.
    assert 0 < largest[0] <= dense_bytes / 2, f"one read took {largest[0] / 2**20:.0f} MB"
    assert mem.growth < dense_bytes, (
        f"peak RSS grew {mem.growth / 2**20:.0f} MB for {dense_bytes / 2**20:.0f} MB of cells"
    )
