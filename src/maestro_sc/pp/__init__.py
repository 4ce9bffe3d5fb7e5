"""Preprocessing of cells (scanpy's ``pp``): transform, select, filter, subsample, compensate.

Every function modifies its input in place and returns ``None``, or with ``copy=True`` returns a
new object and leaves the input unchanged; each takes ``mod=`` for a MuData.
"""

from ._compensate import compensate
from ._panels import harmonize_panels, normalize_batches
from ._simple import DEFAULT_EXCLUDE, arcsinh, filter_samples, select_markers, subsample

__all__ = [
    "DEFAULT_EXCLUDE",
    "arcsinh",
    "compensate",
    "filter_samples",
    "harmonize_panels",
    "normalize_batches",
    "select_markers",
    "subsample",
]
