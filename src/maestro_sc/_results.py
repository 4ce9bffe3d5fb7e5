"""Results stored in a sample AnnData: values made writable to ``.h5ad``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def h5ad_safe(value: Any) -> Any:
    """Turn ``value`` into something anndata writes to h5ad (no ``None``, arrays not lists)."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return {str(k): h5ad_safe(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return {str(c): h5ad_safe(value[c].to_numpy()) for c in value.columns}
    if isinstance(value, (list, tuple, np.ndarray, pd.Index)):
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind == "U":
            return np.asarray([str(v) for v in arr.ravel()], dtype=object).reshape(arr.shape)
        return arr
    if isinstance(value, (np.generic,)):
        return value.item()
    return value
