"""Prototype pooling: a count-aware composition branch of the set encoder (not in the paper).

Softmax attention pooling (PMA, and ``MAB(I, X)`` inside ISAB) returns a *weighted average* of
the cells: the softmax normaliser, which holds how many cells match a query, is divided away.
A population that grows from 0.2 % to 1 % of a sample moves such an average very little, and
the paper names rare populations as a limitation (appendix F.6). Prototype pooling keeps the
counts: ``K`` learned prototypes live in the standardised marker space, every cell is softly
assigned to them, and a sample's composition is the centred log of its mean assignment,

    ``p_k = mean_i softmax_k(-||x_i - c_k||^2 / tau)``,
    ``comp = log(p + eps) - mean_k log(p + eps)``  (``eps = 1 / (4 K)``),

over the cells a view keeps (masked cells are left out, so a masked block is hidden from the
composition as it is from the attention). ``comp`` is projected and added to the pooled vector
``z``, so the decoder and the distillation train the prototypes and the temperature; the
``"pma+proto"`` readout also appends ``comp`` to the embedding. The prototypes start at a
k-means++ draw of the training cells (:meth:`PrototypePool.initialize`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import centred_log_ratio
from .blocks import chunks


def choose_centers(
    x: np.ndarray, k: int, fit: Callable[[np.ndarray, int], np.ndarray], what: str
) -> np.ndarray:
    """``k`` centres ``(k, d)`` for the points ``x`` ``(N, d)``: ``fit(x, k)``, checked.

    With no more than ``k`` distinct points, each distinct point is used, cyclically
    (duplicate centres share their counts), and ``fit`` is not called. ``what`` names the
    caller in the error raised for no points or non-finite ones.
    """
    if x.shape[0] == 0 or not np.isfinite(x).all():
        raise ValueError(f"{what} needs finite cells; got none or non-finite values.")
    distinct = np.unique(x, axis=0)
    if len(distinct) <= k:
        return distinct[np.arange(k) % len(distinct)]
    return fit(x, k)


class PrototypePool(nn.Module):
    """Soft cell counts over ``K`` learned prototypes in the standardised marker space.

    Parameters
    ----------
    n_markers, n_prototypes, dim
        ``d``, ``K`` and ``D`` (the width of the projection added to ``z``).

    Examples
    --------
    >>> import torch
    >>> pool = PrototypePool(5, 8, 16)
    >>> pool(torch.randn(2, 100, 5)).shape
    torch.Size([2, 8])
    """

    def __init__(self, n_markers: int, n_prototypes: int, dim: int) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(n_prototypes, n_markers))
        self.log_tau = nn.Parameter(torch.tensor(math.log(float(n_markers))))
        self.proj = nn.Linear(n_prototypes, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def assignments(self, x: Tensor) -> Tensor:
        """Soft assignment ``(..., n, K)`` of standardised cells ``(..., n, d)``.

        Computed in float32, also under autocast: squared distances lose too much in half
        precision.
        """
        with torch.autocast(x.device.type, enabled=False):
            x, c = x.float(), self.prototypes.float()
            d2 = (x * x).sum(-1, keepdim=True) - 2 * x @ c.T + (c * c).sum(-1)
            return torch.softmax(-d2.clamp_min(0) / self.log_tau.float().exp(), dim=-1)

    def _composition(self, counts: Tensor, n: Tensor) -> Tensor:
        return centred_log_ratio(counts / n.clamp_min(1.0), counts.shape[-1])

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Composition ``(B, K)`` of sets ``(B, n, d)``; ``mask`` ``(B, n)`` drops cells."""
        a = self.assignments(x.float())
        if mask is not None:
            a = a * (~mask).unsqueeze(-1).to(a.dtype)
            n = (~mask).sum(dim=1, keepdim=True).to(a.dtype)
        else:
            n = a.new_full((x.shape[0], 1), float(x.shape[1]))
        return self._composition(a.sum(dim=1), n)

    def streamed(self, x: Tensor, chunk_size: int) -> Tensor:
        """Composition ``(1, K)`` of one set ``(1, n, d)`` of any size, in cell chunks."""
        counts = sum(
            self.assignments(x[:, sl].float()).sum(dim=1) for sl in chunks(x.shape[1], chunk_size)
        )
        return self._composition(counts, x.new_full((1, 1), float(x.shape[1])))

    @torch.no_grad()
    def initialize(self, cells: Tensor, random_state: int = 0) -> None:
        """Set the prototypes from a k-means++ draw of standardised ``cells`` ``(N, d)``.

        The temperature is set from the median squared distance of a cell to its nearest
        prototype.
        """
        from sklearn.cluster import kmeans_plusplus

        centers = choose_centers(
            cells.double().cpu().numpy(),
            self.prototypes.shape[0],
            lambda x, k: kmeans_plusplus(x, k, random_state=random_state)[0],
            "Prototype initialisation",
        )
        c = torch.from_numpy(centers).to(self.prototypes)
        self.prototypes.copy_(c)
        d2 = torch.cdist(cells.to(c), c).pow(2).min(dim=1).values
        self.log_tau.fill_(float(d2.median().clamp_min(1e-3).log()))
