"""Results stored in a sample AnnData: values made writable to ``.h5ad``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd


def h5ad_safe(value: Any) -> Any:
    """A copy of ``value`` that ``AnnData.write_h5ad`` can store.

    Mapping keys become strings and ``None`` values are left out of mappings (elsewhere ``None``
    becomes ``""``); a DataFrame becomes a dict of its columns; a list or tuple of numbers
    becomes an array, of anything else an array of strings; arrays of text become object arrays
    of ``str``; numpy scalars become Python scalars.

    Examples
    --------
    >>> h5ad_safe({"rates": (0.25, 0.5), "names": ["a", 1], "seed": None})
    {'rates': array([0.25, 0.5 ]), 'names': array(['a', '1'], dtype=object)}
    """
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return {str(k): h5ad_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, pd.DataFrame):
        return {str(c): h5ad_safe(value[c].to_numpy()) for c in value.columns}
    if isinstance(value, (np.ndarray, pd.Index)):
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind == "U":
            return np.asarray([str(v) for v in arr.ravel()], dtype=object).reshape(arr.shape)
        return arr
    if isinstance(value, (list, tuple)):
        items = [h5ad_safe(v) for v in value]
        if all(isinstance(v, (int, float, np.number)) for v in items):
            return np.asarray(items)
        return np.asarray([str(v) for v in items], dtype=object)
    if isinstance(value, np.generic):
        return value.item()
    return value
