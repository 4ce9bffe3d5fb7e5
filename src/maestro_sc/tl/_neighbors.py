"""The nearest-neighbour contingency table of sample labels (paper 4.3, Fig. 3b)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._results import NEIGHBORS, neighbor_result, store_result
from .._utils import check_count
from ._prepare import exclude_mask, get_representation, obs_column


def nn_contingency(
    sdata: Any,
    key: str,
    *,
    use_rep: str = "X_maestro",
    metric: str = "euclidean",
    n_neighbors: int = 1,
    exclude: Any = None,
    key_added: str | None = None,
    inplace: bool = True,
) -> dict[str, Any] | None:
    """Label of each sample's nearest other sample: contingency table and agreement (paper Fig. 3b).

    For each sample, its ``n_neighbors`` nearest other samples in the representation are found;
    the table counts (true label × neighbour label). The agreement is the fraction of neighbours
    that share the sample's label; the chance level is the agreement expected when neighbours
    are drawn at random among the other samples, ``Σ_k p_k (n_k − 1) / (n − 1)``. With a batch
    column as ``key`` this is the same-batch neighbour rate, a batch-effect measure: the closer
    to chance, the better mixed.

    Parameters
    ----------
    sdata
        Sample-level AnnData.
    key
        Column of ``sdata.obs`` with the label (diagnosis, condition, batch …). Samples with a
        missing label are left out.
    use_rep
        Key of ``sdata.obsm`` holding the representation (``"X"`` for ``sdata.X``).
    metric
        Distance, any metric of ``sklearn.metrics.pairwise_distances``.
    n_neighbors
        Neighbours per sample (the paper uses 1).
    exclude
        Samples to leave out (as in :func:`linear_probe`).
    key_added
        Key of ``sdata.uns`` for the result (default ``f"nn_{key}_{use_rep}"``).
    inplace
        Store the result in ``sdata.uns[key_added]`` and return ``None`` (read it back with
        :func:`maestro_sc.get.result_df`, draw it with :func:`maestro_sc.pl.nn_contingency`);
        with ``False``, return it and leave ``sdata`` unchanged.

    Returns
    -------
    ``None`` with ``inplace=True``; else a dict with ``table`` (counts, DataFrame true ×
    neighbour label), ``proportions`` (rows normalised), ``agreement``, ``chance``,
    ``per_label`` (agreement per true label), ``neighbors`` (Series: each sample's nearest
    other sample), ``n``, ``key``, ``use_rep`` and ``params``.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=16, random_state=0)
    >>> sdata = mst.tl.baseline_means(adata, "sample")
    >>> mst.tl.nn_contingency(sdata, "diagnosis", use_rep="X_means")
    >>> table = mst.get.result_df(sdata, "nn_diagnosis_X_means")
    >>> int(table.to_numpy().sum()), 0 <= table.attrs["agreement"] <= 1
    (16, True)
    >>> res = mst.tl.nn_contingency(sdata, "diagnosis", use_rep="X_means", inplace=False)
    >>> res["agreement"] == table.attrs["agreement"]
    True
    """
    from sklearn.metrics import pairwise_distances

    rep = get_representation(sdata, use_rep)
    values = obs_column(sdata, key, "key")
    keep = exclude_mask(sdata, exclude) & ~values.isna().to_numpy()
    n = int(keep.sum())
    check_count(n_neighbors, "n_neighbors")
    if n < n_neighbors + 1:
        raise ValueError(
            f"Only {n} labelled samples; nearest neighbours need at least {n_neighbors + 1}."
        )
    labels = values[keep].astype(str).to_numpy()
    names = sdata.obs_names[keep].astype(str)
    if isinstance(values.dtype, pd.CategoricalDtype):
        order = [str(c) for c in values.cat.categories if str(c) in set(labels)]
    else:
        order = sorted(set(labels))
    dist = pairwise_distances(rep[keep], metric=metric)
    np.fill_diagonal(dist, np.inf)
    # Stable sort: ties go to the sample that comes first in sdata.
    nn = np.argsort(dist, axis=1, kind="stable")[:, :n_neighbors]
    true = np.repeat(labels, n_neighbors)
    neigh = labels[nn].ravel()
    table = pd.crosstab(
        pd.Categorical(true, categories=order),
        pd.Categorical(neigh, categories=order),
        dropna=False,
    )
    table = table.reindex(index=order, columns=order, fill_value=0).astype(int)
    table.index.name, table.columns.name = key, f"neighbour {key}"
    counts = pd.Series(labels).value_counts().reindex(order).to_numpy(dtype=float)
    result = neighbor_result(
        table,
        neighbors=pd.Series(names[nn[:, 0]], index=names, name="nearest"),
        agreement=float(np.trace(table.to_numpy()) / table.to_numpy().sum()),
        chance=float(np.sum(counts / n * (counts - 1) / (n - 1))),
        params={"key": key, "use_rep": use_rep, "metric": metric, "n_neighbors": int(n_neighbors)},
    )
    if not inplace:
        return result
    store_result(sdata, key_added or f"nn_{key}_{use_rep}", NEIGHBORS, result)
    return None
