"""Embeddings read from a :class:`~maestro_sc.model.maestro.Maestro`: samples, sets, cells.

:func:`encode` gives the deterministic, streamed embedding of one sample from all its cells
(the readout ``config.readout`` names: pooled ``z``, with the attention mass, the prototype
composition or the codebook composition); :func:`encode_batch` the embeddings of equally sized
sets in one pass; :func:`cell_scores`, :func:`composition` and
:func:`prototype_assignments` the per-cell and prototype readouts for plots and attribution.

The functions here are methods of :class:`~maestro_sc.model.maestro.Maestro` (``self`` is the
model), bound in its class body: they stay its own methods, documented with it. They use the
model's ``config``, ``standardize``, ``_encoder``, ``_cells``, ``_autocast``, ``_readout`` and
the codebook methods (:mod:`maestro_sc.model.codebook`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .blocks import chunks


@torch.no_grad()
def encode(self, x: Tensor, *, which: str | None = None, chunk_size: int | None = None) -> Tensor:
    """Embedding of one sample from all its cells, streamed; deterministic, no grad.

    Parameters
    ----------
    x
        Raw cells ``(n, d)``, any ``n >= 1``.
    which
        ``"teacher"`` or ``"student"`` encoder (default ``config.embed_with``).
    chunk_size
        Cells per chunk (default ``config.chunk_size``).

    Returns
    -------
    Embedding ``(E,)``, ``E = config.embedding_dim``.

    Examples
    --------
    >>> import torch
    >>> from maestro_sc.model import Maestro, MaestroConfig
    >>> model = Maestro(MaestroConfig(n_markers=3, latent_dim=8, ff_dim=16, n_inducing=4))
    >>> model.encode(torch.randn(7, 3), chunk_size=2).shape
    torch.Size([8])
    """
    cells = self._cells(x)
    readout = self.config.readout
    if readout == "codebook":  # the learned input layer only: no attention needed
        return self._codebook_counts(cells, which, chunk_size)[0]
    mass = readout == "pma+mass"
    encoder, chunk = self._encoder(which), chunk_size or self.config.chunk_size
    comp = None if encoder.proto is None else encoder.proto.streamed(cells, chunk)
    with self._autocast():
        out = encoder.streamed(cells, chunk, with_mass=mass, composition=comp)
    z, m = out if mass else (out, None)
    if readout == "pma+codebook":
        return torch.cat([z.float(), self._codebook_counts(cells, which, chunk_size)], 1)[0]
    return self._readout(z, m, comp if readout == "pma+proto" else None)[0]


def encode_batch(self, x: Tensor, which: str | None = None) -> Tensor:
    """Embeddings ``(B, E)`` of equally sized raw sets ``(B, n, d)`` in one forward pass.

    The student path keeps gradients (unless the caller disabled them); the teacher path
    runs without.

    Examples
    --------
    >>> import torch
    >>> from maestro_sc.model import Maestro, MaestroConfig
    >>> model = Maestro(MaestroConfig(n_markers=3, latent_dim=8, ff_dim=16, n_inducing=4))
    >>> model.encode_batch(torch.randn(2, 50, 3), which="student").shape
    torch.Size([2, 8])
    """
    encoder = self._encoder(which)
    if self.config.readout in ("codebook", "pma+codebook"):
        # hard assignments carry no gradient: the codebook readout of each set
        cb = torch.cat([self._codebook_counts(self.standardize(s)[None], which, None)
                        for s in x])  # fmt: skip
        if self.config.readout == "codebook":
            return cb
        z = self.encode_batch_z(x, which)
        return torch.cat([z.float(), cb], dim=1)
    mass = self.config.readout == "pma+mass"
    grad = contextlib.nullcontext() if encoder is self.encoder else torch.no_grad()
    with grad:
        cells = self.standardize(x)
        comp = None if encoder.proto is None else encoder.proto(cells)
        out = encoder(cells, with_mass=mass, composition=comp)
    z, m = out if mass else (out, None)
    return self._readout(z, m, comp if self.config.readout == "pma+proto" else None)


def encode_batch_z(self, x: Tensor, which: str | None = None) -> Tensor:
    """The pooled vectors ``z`` ``(B, D)`` of equally sized raw sets ``(B, n, d)``."""
    encoder = self._encoder(which)
    grad = contextlib.nullcontext() if encoder is self.encoder else torch.no_grad()
    with grad:
        return encoder(self.standardize(x))


@torch.no_grad()
def cell_scores(self, x: Tensor, which: str | None = None, chunk_size: int | None = None) -> Tensor:
    """Per-cell attribution: attention rollout from the pooling seed to each cell.

    The PMA seed's attention over the cells, times the cells' attention over the last
    ISAB's induced points, times those points' attention over the cells (heads averaged),
    streamed. Scores are non-negative and sum to 1 over the sample.

    Examples
    --------
    >>> import torch
    >>> from maestro_sc.model import Maestro, MaestroConfig
    >>> model = Maestro(MaestroConfig(n_markers=3, latent_dim=8, ff_dim=16, n_inducing=4))
    >>> round(float(model.cell_scores(torch.randn(40, 3)).sum()), 4)
    1.0
    """
    encoder = self._encoder(which)
    return encoder.cell_scores(self._cells(x), chunk_size or self.config.chunk_size).float()


def _prototypes(self, which: str | None):
    pool = self._encoder(which).proto
    if pool is None:
        raise ValueError(
            "This model has no prototype pooling (n_prototypes=0); train one with n_prototypes > 0."
        )
    return pool


@torch.no_grad()
def composition(self, x: Tensor, which: str | None = None, chunk_size: int | None = None) -> Tensor:
    """Prototype composition ``(K,)`` (centred log-ratio) of one sample's raw cells.

    Examples
    --------
    >>> import torch
    >>> from maestro_sc.model import Maestro, MaestroConfig
    >>> cfg = MaestroConfig(n_markers=3, latent_dim=8, ff_dim=16, n_inducing=4,
    ...                     n_prototypes=5)
    >>> Maestro(cfg).composition(torch.randn(40, 3)).shape
    torch.Size([5])
    """
    pool = self._prototypes(which)
    return pool.streamed(self._cells(x), chunk_size or self.config.chunk_size)[0].float()


@torch.no_grad()
def prototype_assignments(
    self, x: Tensor, which: str | None = None, chunk_size: int | None = None
) -> Tensor:
    """Soft assignment ``(n, K)`` of each raw cell to the prototypes (rows sum to 1).

    Examples
    --------
    >>> import torch
    >>> from maestro_sc.model import Maestro, preset
    >>> model = Maestro(preset("cpu", n_markers=4, n_prototypes=6))
    >>> a = model.prototype_assignments(torch.randn(40, 4))
    >>> a.shape, round(float(a.sum()), 3)
    (torch.Size([40, 6]), 40.0)
    """
    pool, cells = self._prototypes(which), self._cells(x)
    size = chunk_size or self.config.chunk_size
    return torch.cat([pool.assignments(cells[0, sl]) for sl in chunks(cells.shape[1], size)])
