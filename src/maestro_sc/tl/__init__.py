"""Tools: training, embedding, aggregation, evaluation and baselines (scanpy's ``tl``)."""

from ._aggregate import aggregate_samples
from ._attribution import cell_attribution
from ._baselines import (
    add_baselines,
    baseline_flowsom,
    baseline_gated,
    baseline_kmeans,
    baseline_means,
    baseline_quantiles,
)
from ._embed import embed_samples, pretrain
from ._model import MaestroModel
from ._neighbors import nn_contingency
from ._probe import linear_probe
from ._retrieval import celltype_retrieval

__all__ = [
    "MaestroModel",
    "add_baselines",
    "aggregate_samples",
    "baseline_flowsom",
    "baseline_gated",
    "baseline_kmeans",
    "baseline_means",
    "baseline_quantiles",
    "cell_attribution",
    "celltype_retrieval",
    "embed_samples",
    "linear_probe",
    "nn_contingency",
    "pretrain",
]
