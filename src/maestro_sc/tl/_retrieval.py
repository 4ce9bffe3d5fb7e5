"""Cell-type proportion retrieval from a sample representation (paper 4.5, F.5).

A single linear layer with a softmax output, fitted by cross-entropy to each sample's cell-type
proportions under cross-validation, and compared with predicting the training folds' mean.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from .._results import RETRIEVAL, store_result
from .._utils import check_count, check_random_state
from ._prepare import celltype_proportions, check_penalty, exclude_mask, get_representation

#: Index label of the row that averages the per-cell-type errors in :func:`celltype_retrieval`.
RETRIEVAL_MEAN = "(mean)"


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_softmax_layer(
    X: np.ndarray, P: np.ndarray, l2: float, max_iter: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """One linear layer + softmax fitted to soft targets ``P`` by cross-entropy (L-BFGS).

    Minimises ``mean_i H(P_i, softmax(X_i W + b)) + l2/2 ||W||²``; returns ``(W, b)``.
    """
    from scipy.optimize import minimize

    n, d = X.shape
    k = P.shape[1]

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W = theta[: d * k].reshape(d, k)
        b = theta[d * k :]
        logits = X @ W + b
        logits = logits - logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(logits).sum(axis=1, keepdims=True))
        log_q = logits - log_z
        loss = -(P * log_q).sum() / n + 0.5 * l2 * (W * W).sum()
        resid = (np.exp(log_q) - P) / n
        gW = X.T @ resid + l2 * W
        gb = resid.sum(axis=0)
        return float(loss), np.concatenate([gW.ravel(), gb])

    # Start at the training mean: b = log(mean proportions), W = 0.
    b0 = np.log(np.clip(P.mean(axis=0), 1e-12, None))
    theta0 = np.concatenate([np.zeros(d * k), b0 - b0.mean()])
    res = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    theta = res.x
    return theta[: d * k].reshape(d, k), theta[d * k :]


def celltype_retrieval(
    sdata: Any,
    cells: Any,
    sample_key: str,
    cell_type_key: str,
    *,
    use_rep: str = "X_maestro",
    n_splits: int = 5,
    l2: float = 1e-2,
    exclude: Any = None,
    random_state: int = 0,
    mod: str | None = None,
    key_added: str | None = None,
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Predict each sample's cell-type proportions from its representation (paper 4.5, F.5).

    The ground truth is the proportion of each ``cell_type_key`` value among a sample's cells.
    A single linear layer with a softmax output (all proportions at once, so they sum to 1) is
    fitted by cross-entropy to the soft targets, on standardised features with an L2 penalty,
    under ``n_splits``-fold cross-validation; each sample is predicted once, out of fold. The
    reference is the prediction of the training folds' mean proportions.

    Parameters
    ----------
    sdata
        Sample-level AnnData; ``obs_names`` are the sample ids.
    cells
        AnnData of cells with ``obs[sample_key]`` and ``obs[cell_type_key]`` (or a MuData with
        ``mod=``). Sample ids are matched to ``sdata.obs_names`` as strings.
    sample_key
        Column of the cells' ``obs`` with the sample id.
    cell_type_key
        Column of the cells' ``obs`` with the (gated) cell type.
    use_rep
        Key of ``sdata.obsm`` holding the representation. Leave out a gated-proportion
        baseline here: it is the target itself (paper F.5).
    n_splits
        Folds (capped by the number of samples).
    l2
        L2 penalty on the layer's weights (per sample-averaged loss).
    exclude
        Samples to leave out (as in :func:`linear_probe`).
    random_state
        Seed of the fold shuffle.
    mod
        Modality of a MuData ``cells``.
    key_added
        Key of ``sdata.uns`` for the result (default
        ``f"retrieval_{cell_type_key}_{use_rep}"``).
    inplace
        Store the result in ``sdata.uns[key_added]`` and return ``None`` (read it back with
        :func:`maestro_sc.get.result_df`, draw it with :func:`maestro_sc.pl.celltype_retrieval`);
        with ``False``, return it and leave ``sdata`` unchanged.

    Returns
    -------
    ``None`` with ``inplace=True``; else a DataFrame indexed by cell type, plus a last row ``"(mean)"`` averaging the cell types, with
    columns ``mae`` (mean absolute error of the predicted proportion), ``mae_mean_predictor``
    (of the training-mean prediction), ``relative_mae`` (their ratio: below 1 beats the mean)
    and ``mean_proportion``.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=24, random_state=0)
    >>> sdata = mst.tl.baseline_kmeans(adata, "sample", n_clusters=16)
    >>> mst.tl.celltype_retrieval(sdata, adata, "sample", "cell_type", use_rep="X_kmeans16")
    >>> res = mst.get.result_df(sdata, "retrieval_cell_type_X_kmeans16")
    >>> res.columns.tolist()
    ['mae', 'mae_mean_predictor', 'relative_mae', 'mean_proportion']
    >>> res.loc["(mean)", "relative_mae"]  # doctest: +SKIP
    0.4
    """
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import StandardScaler

    check_penalty(l2, "l2", positive=False)
    check_count(n_splits, "n_splits", minimum=2)
    check_random_state(random_state)
    rep = get_representation(sdata, use_rep)
    keep = exclude_mask(sdata, exclude)
    props = celltype_proportions(cells, sample_key, cell_type_key, mod=mod)
    names = sdata.obs_names.astype(str)
    missing = [s for s, k in zip(names, keep) if k and s not in props.index]
    if len(missing) == int(keep.sum()):
        raise KeyError(
            f"No sample of sdata ({list(names[:5])}...) is in the cells' obs[{sample_key!r}] "
            f"({list(props.index[:5])}...). Use the same sample_key as for sdata."
        )
    if missing:
        warnings.warn(
            f"{len(missing)} samples of sdata have no cells in `cells` and are left out: "
            f"{missing[:10]}.",
            UserWarning,
            stacklevel=2,
        )
        keep &= np.isin(names, props.index)
    X = rep[keep]
    P = props.loc[names[keep]].to_numpy(dtype=np.float64)
    n = len(X)
    if n < 4:
        raise ValueError(f"Only {n} samples remain for cell-type retrieval; need at least 4.")
    k_splits = min(int(n_splits), n)
    if k_splits < int(n_splits):
        warnings.warn(
            f"n_splits={n_splits} is capped to {k_splits} by {n} samples.",
            UserWarning,
            stacklevel=2,
        )

    pred = np.zeros_like(P)
    mean_pred = np.zeros_like(P)
    cv = KFold(k_splits, shuffle=True, random_state=random_state)
    for train, test in cv.split(X):
        scaler = StandardScaler().fit(X[train])
        W, b = fit_softmax_layer(scaler.transform(X[train]), P[train], l2)
        pred[test] = _softmax(scaler.transform(X[test]) @ W + b)
        mean_pred[test] = P[train].mean(axis=0)
    mae = np.abs(pred - P).mean(axis=0)
    mae_mean = np.abs(mean_pred - P).mean(axis=0)
    table = pd.DataFrame(
        {
            "mae": mae,
            "mae_mean_predictor": mae_mean,
            "mean_proportion": P.mean(axis=0),
        },
        index=pd.Index([str(c) for c in props.columns], name="cell_type"),
    )
    table.loc[RETRIEVAL_MEAN] = table.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        table["relative_mae"] = table["mae"] / table["mae_mean_predictor"]
    table = table[["mae", "mae_mean_predictor", "relative_mae", "mean_proportion"]]
    params = {
        "cell_type_key": cell_type_key,
        "use_rep": use_rep,
        "n_splits": k_splits,
        "l2": float(l2),
        "random_state": int(random_state),
        "n_samples": int(n),
    }
    table.attrs = dict(params)
    if not inplace:
        return table
    store_result(sdata, key_added or f"retrieval_{cell_type_key}_{use_rep}", RETRIEVAL, table)
    return None
