"""Evaluation of sample representations: linear probe, cell-type retrieval, nearest neighbours.

The protocol follows the paper's section 4 and appendix F.3–F.5: a logistic (or ridge)
regression on standardised features under repeated stratified cross-validation, a one-layer
softmax network that predicts cell-type proportions, and the contingency table of each sample's
nearest other sample. Every function reads a sample-level AnnData (one row per sample, the
representation in ``obsm``), so MAESTRO embeddings and baselines are judged alike.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._utils import (
    check_count,
    check_random_state,
    logger,
    resolve_cells,
    sample_labels,
    warn_overwrite,
)

Task = Literal["auto", "classification", "regression"]

#: Index label of the row that averages the per-cell-type errors in :func:`celltype_retrieval`.
RETRIEVAL_MEAN = "(mean)"


# ---------------------------------------------------------------------------------------------
# shared input handling
# ---------------------------------------------------------------------------------------------


#: Larger magnitudes overflow the sums of squares behind standardisation and R² in float64.
_HUGE = 1e150


def _check_penalty(value: Any, name: str, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"`{name}` must be a number, got {value!r} ({type(value).__name__}).")
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"`{name}`={value} must be finite and {bound}.")


def get_representation(sdata: Any, use_rep: str) -> np.ndarray:
    """The ``(samples, features)`` matrix ``sdata.obsm[use_rep]`` (or ``X`` for ``"X"``)."""
    from anndata import AnnData

    if not isinstance(sdata, AnnData):
        raise TypeError(
            f"Expected a sample-level AnnData (one row per sample), got {type(sdata).__name__}. "
            "Build one with mst.tl.embed_samples or mst.tl.aggregate_samples."
        )
    if not isinstance(use_rep, str):
        raise TypeError(f"`use_rep` must be an obsm key (str), got {type(use_rep).__name__}.")
    if use_rep in sdata.obsm:
        rep = sdata.obsm[use_rep]
    elif use_rep == "X":
        rep = sdata.X
    else:
        raise KeyError(
            f"Representation {use_rep!r} is not in sdata.obsm (keys: {list(sdata.obsm.keys())}). "
            "Pass one of them as `use_rep`, or compute it first, e.g. with mst.tl.embed_samples "
            "or mst.tl.add_baselines."
        )
    if hasattr(rep, "toarray"):
        rep = rep.toarray()
    rep = np.asarray(rep, dtype=np.float64)
    if rep.ndim != 2:
        raise ValueError(f"Representation {use_rep!r} must be 2-D, got shape {rep.shape}.")
    if rep.shape[1] == 0:
        raise ValueError(f"Representation {use_rep!r} has no features (shape {rep.shape}).")
    if not np.isfinite(rep).all():
        bad = np.where(~np.isfinite(rep).all(axis=1))[0]
        names = [str(sdata.obs_names[i]) for i in bad[:10]]
        raise ValueError(
            f"Representation {use_rep!r} holds NaN/inf values in {len(bad)} samples "
            f"(e.g. {names}). Recompute it, or drop these samples with `exclude=`."
        )
    if rep.size and np.abs(rep).max() > _HUGE:
        raise ValueError(
            f"Representation {use_rep!r} holds values up to {np.abs(rep).max():.3g}, too large "
            "to standardise in float64 (the squares overflow). Rescale it, e.g. divide it by "
            "its largest absolute value."
        )
    return rep


def obs_column(sdata: Any, key: str, what: str) -> pd.Series:
    """``sdata.obs[key]`` with an error listing the columns when it is missing."""
    if not isinstance(key, str):
        raise TypeError(f"`{what}` must be an obs column name (str), got {type(key).__name__}.")
    if key not in sdata.obs.columns:
        raise KeyError(
            f"{what} {key!r} is not a column of sdata.obs. Available columns: "
            f"{list(sdata.obs.columns)}."
        )
    return sdata.obs[key]


def exclude_mask(sdata: Any, exclude: Any) -> np.ndarray:
    """Boolean mask of the samples to keep, from ``exclude``.

    ``exclude`` is ``None``, a boolean mask over samples (``True`` = drop), an ``obs`` query
    string (``"sample_type == 'control'"``) or a list of sample names.
    """
    n = sdata.n_obs
    if exclude is None:
        return np.ones(n, dtype=bool)
    if isinstance(exclude, str):
        try:
            drop = sdata.obs.eval(exclude)
        except Exception as err:
            raise ValueError(
                f"`exclude={exclude!r}` is not a valid query on sdata.obs ({err}). Write it as "
                "for DataFrame.query, e.g. \"sample_type == 'control'\"."
            ) from err
        drop = np.asarray(drop)
        if drop.dtype != bool or drop.shape != (n,):
            raise ValueError(
                f"`exclude={exclude!r}` must evaluate to one boolean per sample, got "
                f"dtype {drop.dtype} and shape {drop.shape}."
            )
        return ~drop
    arr = np.asarray(exclude)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(
                f"A boolean `exclude` mask needs one value per sample ({n}), got shape {arr.shape}."
            )
        return ~arr
    names = [str(x) for x in np.atleast_1d(arr)]
    unknown = [x for x in names if x not in sdata.obs_names]
    if unknown:
        raise KeyError(
            f"`exclude` names samples that are not in sdata.obs_names: {unknown[:10]}. "
            "Pass sample names, a boolean mask or an obs query string."
        )
    return ~np.isin(sdata.obs_names.astype(str), names)


def infer_task(values: pd.Series, task: str) -> str:
    """``"classification"`` for categorical/text/bool targets, ``"regression"`` for numbers."""
    if task not in ("auto", "classification", "regression"):
        raise ValueError(f"`task` must be 'auto', 'classification' or 'regression', got {task!r}.")
    if task != "auto":
        return task
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(dtype):
        return "classification"
    if pd.api.types.is_numeric_dtype(dtype):
        if pd.api.types.is_integer_dtype(dtype) and values.nunique() <= 10:
            logger.info(
                "Integer target with %d values is treated as continuous; pass "
                "task='classification' to treat it as classes.",
                values.nunique(),
            )
        return "regression"
    return "classification"


def _h5ad_safe(value: Any) -> Any:
    """Turn ``value`` into something anndata writes to h5ad (no ``None``, arrays not lists)."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return {str(k): _h5ad_safe(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return {str(c): _h5ad_safe(value[c].to_numpy()) for c in value.columns}
    if isinstance(value, (list, tuple, np.ndarray, pd.Index)):
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind == "U":
            return np.asarray([str(v) for v in arr.ravel()], dtype=object).reshape(arr.shape)
        return arr
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------------
# linear probe (paper 4.4, F.3)
# ---------------------------------------------------------------------------------------------


def _cv_splits(
    y: np.ndarray,
    task: str,
    groups: np.ndarray | None,
    n_splits: int,
    n_repeats: int,
    random_state: int,
) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(repeat, fold, train, test)`` for each fold of the repeated (grouped) CV."""
    from sklearn.model_selection import (
        GroupKFold,
        KFold,
        StratifiedGroupKFold,
        StratifiedKFold,
    )

    out = []
    for r in range(n_repeats):
        seed = random_state + r
        if groups is None and task == "classification":
            cv = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
        elif groups is None:
            cv = KFold(n_splits, shuffle=True, random_state=seed)
        elif task == "classification":
            cv = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
        else:
            cv = GroupKFold(n_splits, shuffle=True, random_state=seed)
        for f, (train, test) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
            out.append((r, f, train, test))
    return out


def _effective_splits(
    y: np.ndarray,
    task: str,
    groups: np.ndarray | None,
    n_splits: int,
    target: str,
    class_names: Sequence[str] | None = None,
) -> int:
    """``n_splits`` capped by the smallest class (or group count), with a warning when capped."""
    if not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"`n_splits` must be an integer >= 2, got {n_splits!r}.")
    cap = len(y)
    reason = f"{len(y)} samples"
    if groups is not None:
        cap = len(np.unique(groups))
        reason = f"{cap} groups"
    if task == "classification":
        classes, counts = np.unique(y, return_counts=True)
        if groups is not None:
            per_class = [len(np.unique(groups[y == c])) for c in classes]
            smallest = int(np.argmin(per_class))
            n_small, unit = per_class[smallest], "groups"
        else:
            smallest = int(np.argmin(counts))
            n_small, unit = int(counts[smallest]), "samples"
        if class_names is not None:
            classes = np.asarray([class_names[c] for c in classes], dtype=object)
        if n_small < 2:
            raise ValueError(
                f"Class {classes[smallest]!r} of {target!r} has only {n_small} {unit}; "
                "cross-validation needs at least 2 per class. Drop the class with `exclude=` "
                "or merge it with another."
            )
        if n_small < cap:
            cap, reason = n_small, f"the smallest class ({classes[smallest]!r}: {n_small} {unit})"
    if cap < 2:
        raise ValueError(f"Cross-validation needs at least 2 folds, but there are only {reason}.")
    if n_splits > cap:
        warnings.warn(
            f"n_splits={n_splits} is capped to {cap} by {reason}.", UserWarning, stacklevel=3
        )
        return int(cap)
    return int(n_splits)


def _macro_auroc(y: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    """Binary AUROC, or the one-vs-rest mean over the classes present in ``y`` with negatives."""
    from sklearn.metrics import roc_auc_score

    if n_classes == 2:
        if len(np.unique(y)) < 2:
            return np.nan
        return float(roc_auc_score(y == 1, proba[:, 1]))
    aucs = [
        roc_auc_score(y == k, proba[:, k]) for k in range(n_classes) if 0 < (y == k).sum() < len(y)
    ]
    return float(np.mean(aucs)) if aucs else np.nan


def _classification_fold(
    X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, n_classes: int, C: float
) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_classes = np.unique(y[train])
    proba = np.zeros((len(test), n_classes))
    if len(train_classes) == 1:
        # A grouped split may leave one class in a training fold; predict it.
        proba[:, train_classes[0]] = 1.0
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        model.fit(X[train], y[train])
        proba[:, train_classes] = model.predict_proba(X[test])
    pred = proba.argmax(axis=1)
    yt = y[test]
    row = {
        "accuracy": float(accuracy_score(yt, pred)),
        "auroc": _macro_auroc(yt, proba, n_classes),
        "f1": float(f1_score(yt, pred, average="macro", zero_division=0)),
    }
    per_class = f1_score(yt, pred, labels=np.arange(n_classes), average=None, zero_division=0)
    present = np.isin(np.arange(n_classes), yt)
    for k in range(n_classes):
        row[f"f1_{k}"] = float(per_class[k]) if present[k] else np.nan
    return row


def _regression_fold(
    X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions of the ridge model and of the training mean."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), Ridge(alpha=alpha))
    model.fit(X[train], y[train])
    return model.predict(X[test]), np.full(len(test), y[train].mean())


def _regression_rows(
    X: np.ndarray,
    y: np.ndarray,
    splits: list[tuple[int, int, np.ndarray, np.ndarray]],
    alpha: float,
) -> list[dict]:
    """MAE per fold; R² per repeat, on the pooled out-of-fold predictions.

    A test fold of a small cohort holds a handful of samples whose own variance makes a per-fold
    R² erratic (large negative values); pooling a repeat's folds gives each sample one
    prediction and a stable R².
    """
    from sklearn.metrics import mean_absolute_error, r2_score

    rows = []
    pred = np.zeros((max(r for r, *_ in splits) + 1, len(y)))
    mean_pred = np.zeros_like(pred)
    for r, f, train, test in splits:
        pred[r, test], mean_pred[r, test] = _regression_fold(X, y, train, test, alpha)
        rows.append(
            {
                "repeat": r,
                "fold": f,
                "mae": float(mean_absolute_error(y[test], pred[r, test])),
                "mae_mean_predictor": float(mean_absolute_error(y[test], mean_pred[r, test])),
            }
        )
    for r in range(len(pred)):
        rows.append(
            {
                "repeat": r,
                "fold": -1,
                "r2": float(r2_score(y, pred[r])),
                "r2_mean_predictor": float(r2_score(y, mean_pred[r])),
            }
        )
    return rows


def linear_probe(
    sdata: Any,
    target: str,
    *,
    use_rep: str = "X_maestro",
    n_splits: int = 5,
    n_repeats: int = 10,
    groups: str | None = None,
    exclude: Any = None,
    task: Task = "auto",
    C: float = 1.0,
    alpha: float = 1.0,
    random_state: int = 0,
    key_added: str | None = None,
    inplace: bool = True,
) -> pd.DataFrame:
    """Linear probe of a sample representation (paper 4.4 and F.3).

    A categorical target is predicted by logistic regression, a continuous one by ridge
    regression, both on features standardised with statistics of the training folds only
    (a scikit-learn pipeline), under ``n_repeats`` × ``n_splits``-fold cross-validation
    (stratified for classes). ``n_splits`` is capped, with a warning, by the smallest class.
    With ``groups``, samples that share a group (e.g. a patient's paired samples) stay in one
    fold (``StratifiedGroupKFold`` / ``GroupKFold``).

    Parameters
    ----------
    sdata
        Sample-level AnnData (one row per sample).
    target
        Column of ``sdata.obs`` to predict. Samples with a missing value are left out.
    use_rep
        Key of ``sdata.obsm`` holding the representation (``"X"`` for ``sdata.X``).
    n_splits
        Folds per repeat.
    n_repeats
        Repeats of the cross-validation, each with its own shuffle.
    groups
        Column of ``sdata.obs``; samples with the same value are kept in one fold.
    exclude
        Samples to leave out: a boolean mask (``True`` = drop), an ``obs`` query string
        (``"sample_type == 'control'"``) or a list of sample names.
    task
        ``"classification"``, ``"regression"`` or ``"auto"`` (categorical, text and bool
        targets are classes, numbers are continuous).
    C
        Inverse L2 strength of the logistic regression (scikit-learn's default 1.0).
    alpha
        L2 strength of the ridge regression.
    random_state
        Seed of the fold shuffles (repeat ``r`` uses ``random_state + r``).
    key_added
        Key of ``sdata.uns`` for the result (default ``f"probe_{target}_{use_rep}"``).
    inplace
        Store the result in ``sdata.uns``.

    Returns
    -------
    Tidy DataFrame with columns ``metric``, ``mean``, ``std`` (over folds), ``n_folds`` and
    ``chance``. Classification metrics: ``accuracy``, ``auroc`` (macro one-vs-rest; binary:
    AUROC), ``f1`` (macro) and ``f1_<class>`` per class; chance is the majority-class accuracy,
    0.5 and 1/k (per class: the class frequency). Regression metrics: ``mae`` (per fold) and
    ``r2`` (per repeat, on the pooled out-of-fold predictions, since a small test fold makes R²
    erratic; its ``n_folds`` counts repeats), with the training-fold-mean predictor's values as
    chance. ``df.attrs`` holds ``folds`` (a dict of columns ``repeat``, ``fold`` (−1 for a
    pooled repeat), ``metric``, ``value``: ``pd.DataFrame(df.attrs["folds"])``), ``task``,
    ``classes`` and the parameters.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=24, random_state=0)
    >>> sdata = mst.tl.baseline_means(adata, sample_key="sample")
    >>> res = mst.tl.linear_probe(sdata, "diagnosis", use_rep="X_means", n_repeats=2)
    >>> res.set_index("metric").loc["accuracy", "mean"]  # doctest: +SKIP
    0.75
    """
    _check_penalty(C, "C", positive=True)
    _check_penalty(alpha, "alpha", positive=False)
    check_random_state(random_state)
    rep = get_representation(sdata, use_rep)
    values = obs_column(sdata, target, "target")
    keep = exclude_mask(sdata, exclude)
    group_values = None
    if groups is not None:
        group_values = obs_column(sdata, groups, "groups")
        if group_values.isna().any():
            raise ValueError(
                f"obs[{groups!r}] has {int(group_values.isna().sum())} missing values; every "
                "sample needs a group for grouped cross-validation."
            )
    task = infer_task(values[keep], task)
    missing = values.isna().to_numpy() & keep
    if missing.any():
        logger.info("%d samples without a %r value are left out.", int(missing.sum()), target)
        keep &= ~missing
    if keep.sum() < 4:
        raise ValueError(
            f"Only {int(keep.sum())} samples remain for the probe of {target!r}; need at least 4."
        )
    X = rep[keep]
    g = None if group_values is None else group_values.astype(str).to_numpy()[keep]
    classes: list[str] = []
    if task == "classification":
        codes, uniques = pd.factorize(values[keep].astype(str), sort=True)
        classes = [str(c) for c in uniques]
        if len(classes) < 2:
            raise ValueError(
                f"Target {target!r} has a single class {classes} among the kept samples; "
                "a classifier needs at least two."
            )
        y = codes.astype(np.int64)
    else:
        try:
            y = values[keep].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"Target {target!r} is not numeric, so it cannot be regressed. Pass "
                "task='classification' or convert the column."
            ) from err
        if not np.isfinite(y).all() or np.abs(y).max() > _HUGE:
            raise ValueError(
                f"Target {target!r} holds inf or values beyond ±{_HUGE:g}, which a regression "
                "cannot fit. Set them to NaN (left out) or rescale the column."
            )
    k_splits = _effective_splits(y, task, g, n_splits, target, classes or None)
    if not isinstance(n_repeats, (int, np.integer)) or n_repeats < 1:
        raise ValueError(f"`n_repeats` must be a positive integer, got {n_repeats!r}.")

    splits = _cv_splits(y, task, g, k_splits, n_repeats, random_state)
    if task == "classification":
        rows = [
            {"repeat": r, "fold": f, **_classification_fold(X, y, train, test, len(classes), C)}
            for r, f, train, test in splits
        ]
    else:
        rows = _regression_rows(X, y, splits, alpha)
    folds = pd.DataFrame(rows).melt(id_vars=["repeat", "fold"], var_name="metric")
    if task == "classification":
        rename = {f"f1_{k}": f"f1_{c}" for k, c in enumerate(classes)}
        folds["metric"] = folds["metric"].replace(rename)
    folds = folds.dropna(subset=["value"]).reset_index(drop=True)

    stats = folds.groupby("metric", sort=False)["value"]
    table = pd.DataFrame(
        {
            "mean": stats.mean(),
            "std": stats.std(ddof=0),
            "n_folds": stats.count().astype(int),
        }
    )
    if task == "classification":
        freq = np.bincount(y, minlength=len(classes)) / len(y)
        chance = {"accuracy": freq.max(), "auroc": 0.5, "f1": 1.0 / len(classes)}
        chance.update({f"f1_{c}": freq[k] for k, c in enumerate(classes)})
        order = ["accuracy", "auroc", "f1", *[f"f1_{c}" for c in classes]]
    else:
        chance = {
            "mae": table.loc["mae_mean_predictor", "mean"],
            "r2": table.loc["r2_mean_predictor", "mean"],
        }
        order = ["mae", "r2"]
    table = table.reindex([m for m in order if m in table.index])
    table["chance"] = [float(chance[m]) for m in table.index]
    table = table.rename_axis("metric").reset_index()
    folds = folds[folds["metric"].isin(order)].reset_index(drop=True)

    params = {
        "target": target,
        "use_rep": use_rep,
        "task": task,
        "n_splits": k_splits,
        "n_repeats": int(n_repeats),
        "groups": groups,
        "random_state": int(random_state),
        "n_samples": len(y),
    }
    table.attrs = {
        "folds": {c: folds[c].tolist() for c in folds.columns},
        "classes": classes,
        **params,
    }
    if inplace:
        key = key_added or f"probe_{target}_{use_rep}"
        warn_overwrite(sdata.uns, key, "sdata.uns")
        sdata.uns[key] = _h5ad_safe(
            {"table": table, "folds": folds, "classes": classes, "params": params}
        )
    return table


def probe_from_uns(sdata: Any, key: str) -> pd.DataFrame:
    """Rebuild the table of :func:`linear_probe` stored under ``sdata.uns[key]``.

    Examples
    --------
    >>> res = probe_from_uns(sdata, "probe_diagnosis_X_maestro")  # doctest: +SKIP
    """
    if key not in sdata.uns:
        raise KeyError(f"{key!r} is not in sdata.uns; run mst.tl.linear_probe first.")
    stored = sdata.uns[key]
    table = pd.DataFrame({c: np.asarray(v) for c, v in stored["table"].items()})
    table["metric"] = table["metric"].astype(str)
    folds = pd.DataFrame({c: np.asarray(v) for c, v in stored["folds"].items()})
    table.attrs = {
        "folds": {c: folds[c].tolist() for c in folds.columns},
        "classes": [str(c) for c in np.atleast_1d(stored.get("classes", []))],
        **dict(stored.get("params", {})),
    }
    return table


# ---------------------------------------------------------------------------------------------
# cell-type proportion retrieval (paper 4.5, F.5)
# ---------------------------------------------------------------------------------------------


def celltype_proportions(
    cells: Any, sample_key: str, cell_type_key: str, *, mod: str | None = None
) -> pd.DataFrame:
    """Samples × cell types table of proportions (rows sum to 1), sample ids as strings.

    Cells with a missing cell type are left out of the denominators.
    """
    adata, mdata = resolve_cells(cells, mod)
    samples = sample_labels(adata, sample_key, mdata)
    in_obs = cell_type_key in adata.obs.columns or (
        mdata is not None and cell_type_key in mdata.obs.columns
    )
    if not isinstance(cell_type_key, str) or not in_obs:
        raise KeyError(
            f"cell_type_key {cell_type_key!r} is not a column of the cells' obs. Available "
            f"columns: {list(adata.obs.columns)}. Pass the column holding gated cell types."
        )
    types = sample_labels(adata, cell_type_key, mdata)
    if samples.isna().any():
        raise ValueError(
            f"{int(samples.isna().sum())} cells have no sample id in obs[{sample_key!r}]; "
            "drop them or fill the column first."
        )
    n_missing = int(types.isna().sum())
    if n_missing:
        logger.warning(
            "%d cells have no %r value; they are left out of the proportions.",
            n_missing,
            cell_type_key,
        )
    sample_order = pd.unique(samples.astype(str).to_numpy())
    if isinstance(types.dtype, pd.CategoricalDtype):
        type_order = [str(c) for c in types.cat.categories if (types == c).any()]
    else:
        type_order = sorted(str(t) for t in types.dropna().unique())
    counts = pd.crosstab(samples.astype(str).to_numpy(), types.astype(str).to_numpy())
    counts = counts.drop(columns=[c for c in counts.columns if c not in type_order])
    counts = counts.reindex(index=sample_order, columns=type_order, fill_value=0)
    totals = counts.sum(axis=1)
    empty = totals.index[totals == 0].tolist()
    if empty:
        raise ValueError(f"Samples {empty[:10]} have no cell with a {cell_type_key!r} value.")
    props = counts.div(totals, axis=0)
    props.index.name, props.columns.name = None, None
    return props


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
) -> pd.DataFrame:
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
        Store the result in ``sdata.uns``.

    Returns
    -------
    DataFrame indexed by cell type, plus a last row ``"(mean)"`` averaging the cell types, with
    columns ``mae`` (mean absolute error of the predicted proportion), ``mae_mean_predictor``
    (of the training-mean prediction), ``relative_mae`` (their ratio: below 1 beats the mean)
    and ``mean_proportion``.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=24, random_state=0)
    >>> sdata = mst.tl.baseline_kmeans(adata, "sample", n_clusters=16)
    >>> res = mst.tl.celltype_retrieval(
    ...     sdata, adata, "sample", "cell_type", use_rep="X_kmeans16"
    ... )  # doctest: +SKIP
    >>> res.loc["(mean)", "relative_mae"]  # doctest: +SKIP
    0.4
    """
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import StandardScaler

    _check_penalty(l2, "l2", positive=False)
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
    if k_splits < 2:
        raise ValueError(f"`n_splits` must be at least 2, got {n_splits!r}.")

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
    if inplace:
        key = key_added or f"retrieval_{cell_type_key}_{use_rep}"
        warn_overwrite(sdata.uns, key, "sdata.uns")
        stored = table.reset_index()
        sdata.uns[key] = _h5ad_safe({"table": stored, "params": params})
    return table


# ---------------------------------------------------------------------------------------------
# nearest-neighbour contingency (paper 4.3, Fig. 3b)
# ---------------------------------------------------------------------------------------------


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
) -> dict[str, Any]:
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
        Store the result in ``sdata.uns``.

    Returns
    -------
    dict with ``table`` (counts, DataFrame true × neighbour label), ``proportions`` (rows
    normalised), ``agreement``, ``chance``, ``per_label`` (agreement per true label),
    ``neighbors`` (Series: each sample's nearest other sample) and ``n``.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=24, random_state=0)
    >>> sdata = mst.tl.baseline_means(adata, "sample")
    >>> res = mst.tl.nn_contingency(sdata, "diagnosis", use_rep="X_means")
    >>> res["agreement"] >= 0  # doctest: +SKIP
    True
    """
    from sklearn.metrics import pairwise_distances

    rep = get_representation(sdata, use_rep)
    values = obs_column(sdata, key, "key")
    keep = exclude_mask(sdata, exclude) & ~values.isna().to_numpy()
    n = int(keep.sum())
    if not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
        raise ValueError(f"`n_neighbors` must be a positive integer, got {n_neighbors!r}.")
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
    props = table.div(table.sum(axis=1).replace(0, np.nan), axis=0)
    counts = pd.Series(labels).value_counts().reindex(order).to_numpy(dtype=float)
    chance = float(np.sum(counts / n * (counts - 1) / (n - 1)))
    agreement = float(np.trace(table.to_numpy()) / table.to_numpy().sum())
    per_label = pd.Series(np.diag(props.to_numpy()), index=order, name="agreement")
    result = {
        "table": table,
        "proportions": props,
        "agreement": agreement,
        "chance": chance,
        "per_label": per_label,
        "neighbors": pd.Series(names[nn[:, 0]], index=names, name="nearest"),
        "n": n,
        "key": key,
        "use_rep": use_rep,
    }
    if inplace:
        uns_key = key_added or f"nn_{key}_{use_rep}"
        warn_overwrite(sdata.uns, uns_key, "sdata.uns")
        sdata.uns[uns_key] = _h5ad_safe(
            {
                "labels": order,
                "counts": table.to_numpy(),
                "agreement": agreement,
                "chance": chance,
                "neighbors": result["neighbors"].to_numpy(),
                "samples": np.asarray(names),
                "params": {
                    "key": key,
                    "use_rep": use_rep,
                    "metric": metric,
                    "n_neighbors": int(n_neighbors),
                },
            }
        )
    return result
