"""Tools: training, embedding, aggregation, evaluation and baselines (scanpy's ``tl``)."""

from ._aggregate import aggregate_samples

__all__ = ["aggregate_samples"]
