"""Shared fixtures: a tiny two-type cohort, a tiny model to train on it, the shared real data."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def tiny_cohort(n_samples: int = 8, n_cells: int = 300, n_markers: int = 5, seed: int = 0):
    """Samples of two kinds: kind B has a population shifted on marker 0."""
    rng = np.random.default_rng(seed)
    blocks, obs = [], []
    for s in range(n_samples):
        kind = "A" if s % 2 == 0 else "B"
        n = n_cells + 7 * s
        x = rng.normal(0, 1, size=(n, n_markers)).astype(np.float32)
        if kind == "B":
            x[: n // 2, 0] += 3.0
        blocks.append(x)
        obs.append(pd.DataFrame({"sample": f"s{s}", "kind": kind, "cell": np.arange(n)}))
    obs = pd.concat(obs, ignore_index=True)
    obs["sample"] = obs["sample"].astype("category")
    obs["kind"] = obs["kind"].astype("category")
    obs.index = [f"c{i}" for i in range(len(obs))]
    var = pd.DataFrame(index=[f"m{j}" for j in range(n_markers)])
    return ad.AnnData(np.concatenate(blocks), obs=obs, var=var)


#: Model settings small enough to train on :func:`tiny_cohort` in about a second.
TINY = dict(
    latent_dim=16,
    ff_dim=32,
    n_heads=2,
    n_inducing=8,
    n_sub=64,
    head_dim=32,
    batch_size=4,
    min_steps=0,
    n_prototypes=8,
)
#: Width of a TINY model's embedding: z and the prototype composition.
EMBED_DIM = TINY["latent_dim"] + TINY["n_prototypes"]


def train_tiny(adata, **kw):
    """``mst.tl.pretrain`` of a TINY model (``cpu`` preset, 2 epochs, seed 0) on ``adata``."""
    import maestro_sc as mst

    args = dict(preset="cpu", max_epochs=2, progress=False, random_state=0, **TINY)
    args.update(kw)
    return mst.tl.pretrain(adata, "sample", **args)


@pytest.fixture
def cohort():
    return tiny_cohort()


@pytest.fixture
def train():
    """Train a TINY model: ``train(adata, **pretrain_arguments)`` (see :func:`train_tiny`)."""
    return train_tiny


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module on one torch thread, restoring the count after it.

    The model's per-operation work in the tests is small, and OpenMP's busy-waiting threads then
    cost more than they give: on a shared 2-core machine one thread embedded cells 10-20 times
    faster. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
