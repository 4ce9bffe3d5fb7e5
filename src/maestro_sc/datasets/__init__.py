"""Example data: the simulated cohort and loaders for the real sets in ``../shared/data``."""

from ._shared import SHARED_SETS, marker_channels, preprocess_shared, read_shared
from ._synthetic import synthetic_cohort

__all__ = ["SHARED_SETS", "marker_channels", "preprocess_shared", "read_shared", "synthetic_cohort"]
