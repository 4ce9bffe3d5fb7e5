"""Example data: the simulated cohort (also as FCS files) and the real sets in ``../shared/data``."""

from ._fcs import write_synthetic_fcs
from ._shared import SHARED_SETS, marker_channels, preprocess_shared, read_shared
from ._synthetic import synthetic_cohort

__all__ = [
    "SHARED_SETS",
    "marker_channels",
    "preprocess_shared",
    "read_shared",
    "synthetic_cohort",
    "write_synthetic_fcs",
]
