"""Cell-level attribution: which cells place a sample where it is in the embedding."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._data import SampleIndex
from .._utils import check_count, resolve_cells, warn_overwrite
from ._model import MaestroModel, check_which, match_panel


def cell_attribution(
    adata: Any,
    model: MaestroModel,
    sample_key: str,
    *,
    key_added: str = "maestro_attribution",
    method: str = "auto",
    which: str | None = None,
    layer: str | None = None,
    mod: str | None = None,
    chunk_size: int | None = None,
    copy: bool = False,
    progress: bool = True,
) -> Any:
    """Score each cell by how much it places its sample where it is in the embedding.

    Two scores:

    - ``"composition"`` (models with prototype pooling, ``n_prototypes > 0``): how enriched
      the cell's kind is in its sample compared with the cohort. With ``a_ik`` the cell's soft
      assignment to prototype ``k``, ``c_sk`` the sample's composition (centred log-ratio) and
      ``m_k`` its median over the samples of ``adata`` (so pass the whole cohort), the score is
      ``sum_k a_ik (c_sk - m_k)``: > 0 for cells of populations the sample has more of than a
      typical sample, < 0 for depleted ones, in log-ratio units (1 = e-fold enriched).
    - ``"attention"``: the attention rollout of the encoder, the pooling seed's attention over
      the last ISAB's inducing points times those points' attention over the cells (heads
      averaged). Within a sample the scores sum to the number of cells, so 1 is an average
      cell and 5 a cell weighted five times the average.

    Both are computed on all of a sample's cells, streamed.

    Parameters
    ----------
    adata
        AnnData of cells (or a MuData with ``mod=``) with the model's markers.
    model
        A trained :class:`~maestro_sc.tl.MaestroModel`.
    sample_key
        Column of ``obs`` with the sample id of each cell.
    key_added
        Column of ``obs`` that receives the scores.
    method
        ``"composition"``, ``"attention"`` or ``"auto"`` (composition when the model has
        prototypes, else attention).
    which
        ``"teacher"`` or ``"student"`` encoder (default: the model's ``embed_with``).
    layer
        Read values from ``adata.layers[layer]``.
    mod
        Modality of a MuData.
    chunk_size
        Cells per streamed chunk.
    copy
        Return a new AnnData instead of writing into ``adata``.
    progress
        Show a progress bar over samples.

    Returns
    -------
    ``None`` (scores in ``adata.obs[key_added]``), or the new AnnData with ``copy=True``.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=12, random_state=0)
    >>> model = mst.tl.pretrain(adata, "sample", max_epochs=1, min_steps=2, progress=False)
    >>> mst.tl.cell_attribution(adata, model, "sample", progress=False)  # composition
    >>> scores = adata.obs["maestro_attribution"]
    >>> bool((scores > 0).any() and (scores < 0).any())  # enriched and depleted cells
    True
    >>> mst.tl.cell_attribution(adata, model, "sample", method="attention", progress=False)
    >>> round(float(adata.obs["maestro_attribution"].mean()), 3)  # 1 = an average cell
    1.0
    """
    import torch
    from tqdm import tqdm

    if not isinstance(model, MaestroModel):
        raise TypeError(f"`model` must be a MaestroModel, got {type(model).__name__}.")
    has_prototypes = model.net.config.n_prototypes > 0
    if method == "auto":
        method = "composition" if has_prototypes else "attention"
    if method not in ("composition", "attention"):
        raise ValueError(f"method={method!r} is not one of 'composition', 'attention', 'auto'.")
    if method == "composition" and not has_prototypes:
        raise ValueError(
            "method='composition' needs a model with prototype pooling (n_prototypes > 0); "
            "use method='attention' or train with preset='cpu' or n_prototypes=64."
        )
    check_which(which)
    check_count(chunk_size, "chunk_size", none=True)
    target, _ = resolve_cells(adata, mod)
    markers = match_panel(adata, model.markers, mod=mod)
    index = SampleIndex(adata, sample_key, markers=markers, layer=layer, mod=mod)
    scores = np.zeros(target.n_obs, dtype=np.float32)
    net = model.net.eval()
    device = next(net.parameters()).device
    if method == "composition" and index.n_samples < 2:
        raise ValueError(
            "method='composition' compares each sample with the others, and adata holds one "
            "sample: score the whole cohort, then subset (or use method='attention')."
        )
    bar = dict(total=index.n_samples, disable=not progress, desc="attribution")
    if method == "attention":
        for i, cells in tqdm(index.iter_samples(), **bar):
            x = torch.from_numpy(cells).to(device)
            s = net.cell_scores(x, which=which, chunk_size=chunk_size)
            scores[index.positions(i)] = s.cpu().numpy() * len(cells)
    else:
        comp = np.stack(
            [
                net.composition(torch.from_numpy(cells).to(device), which, chunk_size).cpu()
                for _, cells in tqdm(index.iter_samples(), **bar)
            ]
        )
        deviation = torch.from_numpy(comp - np.median(comp, axis=0)).to(device)
        for i, cells in index.iter_samples():
            a = net.prototype_assignments(torch.from_numpy(cells).to(device), which, chunk_size)
            scores[index.positions(i)] = (a @ deviation[i]).cpu().numpy()
    if copy:
        if getattr(target, "isbacked", False):
            raise ValueError(
                "copy=True needs an in-memory AnnData; load it with adata.to_memory()."
            )
        target = target.copy()
    elif getattr(target, "isbacked", False):
        raise ValueError(
            "Cannot write scores into a backed AnnData's obs in place; pass copy=True or load it "
            "with adata.to_memory()."
        )
    warn_overwrite(target.obs, key_added, "obs")
    target.obs[key_added] = scores
    return target if copy else None
