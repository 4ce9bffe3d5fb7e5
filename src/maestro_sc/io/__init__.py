"""Reading cytometry data: FCS files into AnnData (readfcs first, flowio as the fallback)."""

from ._fcs import read_fcs, read_fcs_folder

__all__ = ["read_fcs", "read_fcs_folder"]
