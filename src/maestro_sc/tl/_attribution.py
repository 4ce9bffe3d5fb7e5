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
    which: str | None = None,
    layer: str | None = None,
    mod: str | None = None,
    chunk_size: int | None = None,
    copy: bool = False,
    progress: bool = True,
) -> Any:
    """Score each cell by how much the sample's embedding attends to it.

    The score is the attention rollout of the encoder: the pooling seed's attention over the
    last ISAB's inducing points, times those points' attention over the cells (heads averaged),
    computed on all of a sample's cells, streamed. Within a sample the scores sum to the number
    of cells, so 1 is an average cell and 5 is a cell weighted five times the average.

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
    >>> model = mst.tl.pretrain(adata, "sample", max_epochs=1, progress=False)
    >>> mst.tl.cell_attribution(adata, model, "sample", progress=False)
    >>> float(adata.obs["maestro_attribution"].mean())  # doctest: +ELLIPSIS
    1.0...
    """
    import torch
    from tqdm import tqdm

    if not isinstance(model, MaestroModel):
        raise TypeError(f"`model` must be a MaestroModel, got {type(model).__name__}.")
    check_which(which)
    check_count(chunk_size, "chunk_size", none=True)
    target, _ = resolve_cells(adata, mod)
    markers = match_panel(adata, model.markers, mod=mod)
    index = SampleIndex(adata, sample_key, markers=markers, layer=layer, mod=mod)
    scores = np.zeros(target.n_obs, dtype=np.float32)
    net = model.net.eval()
    device = next(net.parameters()).device
    for i, cells in tqdm(
        index.iter_samples(), total=index.n_samples, disable=not progress, desc="attribution"
    ):
        s = net.cell_scores(torch.from_numpy(cells).to(device), which=which, chunk_size=chunk_size)
        scores[index.positions(i)] = s.cpu().numpy() * len(cells)
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
