"""The codebook readout of :class:`~maestro_sc.model.maestro.Maestro`: fit, assign, compose.

After training, a k-means codebook of ``config.n_codebook`` states is fitted in the teacher's
input-layer space; a sample's codebook readout is the centred log-ratio of its cells' shares
per state (``readout="codebook"`` or ``"pma+codebook"``). Not in the paper; see
``docs/model.md``.

The functions here are methods of :class:`~maestro_sc.model.maestro.Maestro` (``self`` is the
model), bound in its class body: they stay its own methods, documented with it. They use the
model's ``config``, ``codebook`` buffer, ``standardize``, ``_encoder`` and ``_cells``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._utils import centred_log_ratio
from .blocks import chunks
from .prototypes import choose_centers


@torch.no_grad()
def fit_codebook(self, cells: Tensor, random_state: int = 0) -> None:
    """Fit the codebook readout: k-means of the teacher's input-layer states of raw ``cells``.

    ``cells`` ``(N, d)`` should be a pooled subsample of the training cells with every
    sample represented. Does nothing without a codebook (``config.n_codebook == 0``).

    Examples
    --------
    >>> import torch
    >>> from maestro_sc.model import Maestro, MaestroConfig
    >>> cfg = MaestroConfig(n_markers=3, latent_dim=8, ff_dim=16, n_inducing=4,
    ...                     n_codebook=5, readout="codebook")
    >>> model = Maestro(cfg)
    >>> model.fit_codebook(torch.randn(500, 3))
    >>> model.encode(torch.randn(40, 3)).shape
    torch.Size([5])
    """
    if not self.config.n_codebook:
        return
    from sklearn.cluster import MiniBatchKMeans

    def kmeans(x: np.ndarray, k: int) -> np.ndarray:
        km = MiniBatchKMeans(k, batch_size=4096, n_init=3, random_state=random_state)
        return km.fit(x).cluster_centers_

    states = self.teacher_encoder.embed(self.standardize(cells)).double().cpu().numpy()
    centers = choose_centers(states, self.config.n_codebook, kmeans, "Fitting the codebook")
    self.codebook.copy_(torch.from_numpy(centers).to(self.codebook))


def codebook_composition(
    self, x: Tensor, which: str | None = None, chunk_size: int | None = None
) -> Tensor:
    """Centred log-ratio composition ``(K,)`` of one sample's raw cells over the codebook.

    Each cell is assigned to its nearest codebook state (in the input-layer space of the
    chosen encoder); the composition is ``log(p + 1/(4K)) - mean_k log(p + 1/(4K))``.

    Examples
    --------
    >>> import torch
    >>> from maestro_sc.model import Maestro, MaestroConfig
    >>> cfg = MaestroConfig(n_markers=3, latent_dim=8, ff_dim=16, n_inducing=4,
    ...                     n_codebook=4, readout="codebook")
    >>> model = Maestro(cfg)
    >>> _ = torch.manual_seed(0)
    >>> model.fit_codebook(torch.randn(200, 3))
    >>> abs(round(float(model.codebook_composition(torch.randn(30, 3)).sum()), 4))
    0.0
    """
    if not self.config.n_codebook:
        raise ValueError("This model has no codebook (n_codebook=0).")
    return self._codebook_counts(self._cells(x), which, chunk_size)[0]


@torch.no_grad()
def codebook_assignments(
    self, x: Tensor, which: str | None = None, chunk_size: int | None = None
) -> Tensor:
    """Index ``(n,)`` of each raw cell's nearest codebook state.

    Examples
    --------
    >>> import torch
    >>> from maestro_sc.model import Maestro, MaestroConfig
    >>> cfg = MaestroConfig(n_markers=3, latent_dim=8, ff_dim=16, n_inducing=4,
    ...                     n_codebook=4, readout="codebook")
    >>> model = Maestro(cfg)
    >>> model.fit_codebook(torch.randn(200, 3))
    >>> model.codebook_assignments(torch.randn(30, 3)).shape
    torch.Size([30])
    """
    if not self.config.n_codebook:
        raise ValueError("This model has no codebook (n_codebook=0).")
    return self._assign(self._cells(x)[0], which, chunk_size)


def _assign(self, cells: Tensor, which: str | None, chunk_size: int | None) -> Tensor:
    """Nearest codebook state of standardised cells ``(n, d)``."""
    embed = self._encoder(which).embed
    size = chunk_size or self.config.chunk_size
    c = self.codebook.float()
    c2 = (c * c).sum(-1)
    out = []
    for sl in chunks(cells.shape[0], size):
        h = embed(cells[sl]).float()
        out.append((c2 - 2 * h @ c.T).argmin(dim=1))  # ||h||^2 is the same for every code
    return torch.cat(out)


@torch.no_grad()
def _codebook_counts(self, cells: Tensor, which: str | None, chunk_size: int | None) -> Tensor:
    k = self.config.n_codebook
    labels = self._assign(cells[0], which, chunk_size)
    p = torch.bincount(labels, minlength=k).float() / max(1, labels.numel())
    return centred_log_ratio(p, k).unsqueeze(0)
