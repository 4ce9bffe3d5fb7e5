"""Tools: training, embedding, aggregation, evaluation and baselines (scanpy's ``tl``)."""

from ._aggregate import aggregate_samples
from ._embed import embed_samples, pretrain
from ._model import MaestroModel

__all__ = ["MaestroModel", "aggregate_samples", "embed_samples", "pretrain"]
