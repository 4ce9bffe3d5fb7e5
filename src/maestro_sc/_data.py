"""The sample index: the one way model code reads cells.

Built once per call from an AnnData of cells and a sample column. It holds, CSR-like, the row
positions of each sample's cells (sorted, so a backed file is read in order) and reads one
sample's cells, or a seeded random subset of them, as a contiguous float32 array.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._utils import get_matrix, validate_cells


class SampleIndex:
    """Per-sample cell positions into an AnnData, and a reader for one sample at a time.

    Parameters
    ----------
    adata
        AnnData of cells (in memory or backed ``'r'``), or a MuData with ``mod=``.
    sample_key
        Column of ``obs`` holding the sample id of each cell.
    markers
        Marker names to read, in this order (default: all ``var_names``).
    layer
        Read values from ``adata.layers[layer]`` instead of ``X``.
    mod
        Modality of a MuData.
    check_values
        Scan the data for NaN/inf before anything else (one pass over the file when backed).

    Examples
    --------
    >>> import maestro_sc as mst
    >>> from maestro_sc._data import SampleIndex
    >>> adata = mst.datasets.synthetic_cohort(n_samples=6, random_state=0)
    >>> index = SampleIndex(adata, "sample")
    >>> cells = index.read(0, n=100, random_state=0)
    >>> cells.shape[0]
    100
    """

    def __init__(
        self,
        adata: Any,
        sample_key: str,
        *,
        markers: Sequence[str] | None = None,
        layer: str | None = None,
        mod: str | None = None,
        check_values: bool = True,
    ) -> None:
        if not isinstance(sample_key, str):
            raise TypeError(
                f"`sample_key` must be the obs column (str) holding each cell's sample id, got "
                f"{sample_key!r}."
            )
        adata, labels, cols = validate_cells(
            adata,
            sample_key,
            markers=markers,
            layer=layer,
            mod=mod,
            check_values=check_values,
            float32=True,
        )
        codes, uniques = pd.factorize(labels.to_numpy(), sort=False)
        self.adata = adata
        self.sample_key = sample_key
        self.layer = layer
        self.cols = np.asarray(cols)
        self.markers = [str(m) for m in adata.var_names[self.cols]]
        self.sample_ids = [str(u) for u in uniques]
        if len(set(self.sample_ids)) != len(self.sample_ids):
            raise ValueError(
                f"Sample ids in obs[{sample_key!r}] collide once turned into strings "
                "(e.g. 1 and '1'); make them unique strings first."
            )
        self.codes = codes.astype(np.int64)
        counts = np.bincount(self.codes, minlength=len(uniques))
        self.counts = counts.astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        # Stable sort keeps each sample's rows increasing, which h5py needs for backed reads.
        self.order = np.argsort(self.codes, kind="stable")
        self._full_cols = bool(
            len(self.cols) == adata.n_vars and np.array_equal(self.cols, np.arange(adata.n_vars))
        )

    @property
    def n_samples(self) -> int:
        return len(self.sample_ids)

    @property
    def n_markers(self) -> int:
        return len(self.cols)

    def positions(self, i: int) -> np.ndarray:
        """Sorted row positions of sample ``i``'s cells."""
        return self.order[self.offsets[i] : self.offsets[i + 1]]

    def first_positions(self) -> np.ndarray:
        """Row of the first cell of each sample (in the order of :attr:`sample_ids`)."""
        return self.order[self.offsets[:-1]]

    def subset_positions(
        self, i: int, n: int | None, random_state: int | np.random.Generator | None = None
    ) -> np.ndarray:
        """Rows of a random subset of ``n`` cells of sample ``i`` (all of them if it is smaller)."""
        pos = self.positions(i)
        if n is None or n >= len(pos):
            return pos
        rng = np.random.default_rng(random_state)
        return np.sort(rng.choice(pos, size=n, replace=False))

    def read(
        self,
        i: int,
        n: int | None = None,
        random_state: int | np.random.Generator | None = None,
    ) -> np.ndarray:
        """Cells of sample ``i`` as a float32 ``(cells, markers)`` array.

        With ``n``, a random subset of ``min(n, cells)`` cells, drawn without replacement.
        """
        return self.read_rows(self.subset_positions(i, n, random_state))

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Values of the given sorted rows, restricted to the index's markers, as float32."""
        mat = get_matrix(self.adata, self.layer)
        rows = np.asarray(rows)
        if len(rows) == 0:
            return np.zeros((0, self.n_markers), dtype=np.float32)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo == len(rows):
            block = mat[lo:hi]
        elif hi - lo <= 4 * len(rows):
            # Dense enough: one contiguous read beats fancy indexing on a backed file.
            block = mat[lo:hi]
            block = block[rows - lo]
        else:
            block = mat[rows]
        if hasattr(block, "toarray"):
            block = block.toarray()
        block = np.asarray(block)
        if not self._full_cols:
            block = block[:, self.cols]
        return np.ascontiguousarray(block, dtype=np.float32)

    def iter_samples(self):
        """Yield ``(i, cells)`` for every sample, reading one sample at a time."""
        for i in range(self.n_samples):
            yield i, self.read(i)

    def sample_means(self) -> np.ndarray:
        """Per-sample mean of each marker, ``(samples, markers)`` float64."""
        out = np.zeros((self.n_samples, self.n_markers))
        for i, cells in self.iter_samples():
            out[i] = cells.mean(axis=0, dtype=np.float64)
        return out
