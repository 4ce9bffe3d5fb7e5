"""Reading and writing cytometry data: FCS files to and from AnnData.

Files are read by readfcs first, flowio as the fallback; events are written as FCS 3.1 files of
32-bit floats with flowio.
"""

from ._fcs import read_fcs, read_fcs_folder
from ._fcs_write import write_fcs

__all__ = ["read_fcs", "read_fcs_folder", "write_fcs"]
