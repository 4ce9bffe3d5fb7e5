"""The linear probe of a sample representation (paper 4.4, F.3).

Logistic (or ridge) regression on standardised features under repeated, optionally grouped,
stratified cross-validation; the result is a tidy table of metrics with their chance levels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._results import PROBE, store_result
from .._utils import check_count, check_random_state, logger
from ._prepare import HUGE, check_penalty, exclude_mask, get_representation, obs_column

Task = Literal["auto", "classification", "regression"]


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
) -> pd.DataFrame | None:
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
        Store the result in ``sdata.uns[key_added]`` and return ``None`` (read it back with
        :func:`maestro_sc.get.result_df`, draw it with :func:`maestro_sc.pl.probe`); with
        ``False``, return it and leave ``sdata`` unchanged.

    Returns
    -------
    ``None`` with ``inplace=True``; else a tidy DataFrame with columns ``metric``, ``mean``, ``std`` (over folds), ``n_folds`` and
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
    >>> mst.tl.linear_probe(sdata, "diagnosis", use_rep="X_means", n_repeats=2)
    >>> res = mst.get.result_df(sdata, "probe_diagnosis_X_means")
    >>> res.set_index("metric").loc["accuracy", "mean"]  # doctest: +SKIP
    0.75
    >>> same = mst.tl.linear_probe(
    ...     sdata, "diagnosis", use_rep="X_means", n_repeats=2, inplace=False
    ... )
    >>> same["mean"].equals(res["mean"])
    True
    """
    check_penalty(C, "C", positive=True)
    check_count(n_splits, "n_splits", minimum=2)
    check_count(n_repeats, "n_repeats")
    check_penalty(alpha, "alpha", positive=False)
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
        if not np.isfinite(y).all() or np.abs(y).max() > HUGE:
            raise ValueError(
                f"Target {target!r} holds inf or values beyond ±{HUGE:g}, which a regression "
                "cannot fit. Set them to NaN (left out) or rescale the column."
            )
    k_splits = _effective_splits(y, task, g, n_splits, target, classes or None)

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
    if not inplace:
        return table
    store_result(sdata, key_added or f"probe_{target}_{use_rep}", PROBE, table)
    return None
