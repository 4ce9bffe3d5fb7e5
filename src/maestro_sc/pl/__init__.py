"""Plots (scanpy's ``pl``): each returns matplotlib Axes and takes ``ax=``, ``show=``, ``save=``."""

from ._cells import cell_attribution, reconstruction
from ._embedding import embedding
from ._evaluate import celltype_retrieval, nn_contingency, probe
from ._training import training_history

__all__ = [
    "cell_attribution",
    "celltype_retrieval",
    "embedding",
    "nn_contingency",
    "probe",
    "reconstruction",
    "training_history",
]
