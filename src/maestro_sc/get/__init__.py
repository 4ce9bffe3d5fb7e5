"""Getters (scanpy's ``get``): results that ``tl`` stored in a sample AnnData, as DataFrames."""

from .._results import result_df

__all__ = ["result_df"]
