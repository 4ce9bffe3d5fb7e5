"""Tools: training, embedding, aggregation, evaluation and baselines (scanpy's ``tl``)."""

from ._aggregate import aggregate_samples
from ._embed import embed_samples, pretrain
from ._model import MaestroModel

__all__ = ["MaestroModel", "aggregate_samples", "embed_samples", "pretrain"]

from . import _baselines as baselines
from ._baselines import (
    add_baselines,
    baseline_flowsom,
    baseline_gated,
    baseline_kmeans,
    baseline_means,
    baseline_quantiles,
)
from ._evaluate import celltype_retrieval, linear_probe, nn_contingency

__all__ += [
    "add_baselines",
    "baseline_flowsom",
    "baseline_gated",
    "baseline_kmeans",
    "baseline_means",
    "baseline_quantiles",
    "baselines",
    "celltype_retrieval",
    "linear_probe",
    "nn_contingency",
]
