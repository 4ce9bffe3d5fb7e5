"""The set decoder ``g`` (paper eq. 9 and F.2): from ``z`` back to a set of cells.

- :class:`PaperDecoder` (``decoder="paper"``): ``z`` copied to every unmasked position and the
  mask token to every masked one, ``PMA_{n_sub}`` with ``n_sub`` learned seeds (the seeds break
  the symmetry between output cells), ``SAB x 3``, ``Linear(D -> d)``. Always ``n_sub`` outputs.
- :class:`QueryDecoder` (``decoder="queries"``, default): one query per output cell drawn
  from a learned diagonal Gaussian in ``R^D`` plus a learned "was masked" embedding, ``MAB``
  cross-attention to ``z``, ``SAB x 3`` (or ISAB), ``Linear(D -> d)``. Any output size; random
  queries cannot collapse to identical rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ._random import randn
from .blocks import ISAB, MAB, PMA, SAB

if TYPE_CHECKING:  # pragma: no cover
    from .config import MaestroConfig


def _set_blocks(
    kind: str, depth: int, dim: int, n_heads: int, ff_dim: int, n_inducing: int
) -> nn.Sequential:
    if kind == "sab":
        return nn.Sequential(*(SAB(dim, n_heads, ff_dim) for _ in range(depth)))
    if kind == "isab":
        return nn.Sequential(*(ISAB(dim, n_heads, ff_dim, n_inducing) for _ in range(depth)))
    raise ValueError(f"decoder_block {kind!r} is not one of ('sab', 'isab').")


class QueryDecoder(nn.Module):
    """Decoder with learned-Gaussian queries (a deviation from paper eq. 9, see docs/model.md).

    ``q_i = mu + sigma * e_i + u[mask_i]``, ``e_i ~ N(0, I)``; output
    ``Linear(SAB^3(MAB(q, z)))``.

    Examples
    --------
    >>> import torch
    >>> dec = QueryDecoder(n_markers=5, dim=16, n_heads=2, ff_dim=32)
    >>> dec(torch.randn(3, 16), torch.zeros(3, 40, dtype=torch.bool)).shape
    torch.Size([3, 40, 5])
    """

    def __init__(
        self,
        n_markers: int,
        dim: int,
        n_heads: int,
        ff_dim: int,
        depth: int = 3,
        block: str = "sab",
        n_inducing: int = 32,
    ) -> None:
        super().__init__()
        self.query_mean = nn.Parameter(torch.zeros(dim))
        self.query_log_std = nn.Parameter(torch.zeros(dim))
        self.was_masked = nn.Embedding(2, dim)
        self.cross = MAB(dim, n_heads, ff_dim)
        self.blocks = _set_blocks(block, depth, dim, n_heads, ff_dim, n_inducing)
        self.out = nn.Linear(dim, n_markers)

    def forward(
        self,
        z: Tensor,
        mask: Tensor,
        generator: torch.Generator | None = None,
        mask_token: Tensor | None = None,
    ) -> Tensor:
        """Reconstruct ``(B, n, d)`` from ``z`` ``(B, D)`` and the views' masks ``(B, n)``."""
        noise = randn((*mask.shape, z.shape[-1]), generator, z.device).to(z.dtype)
        queries = self.query_mean + self.query_log_std.exp() * noise + self.was_masked(mask.long())
        return self.out(self.blocks(self.cross(queries, z.unsqueeze(1))))


class PaperDecoder(nn.Module):
    """Decoder of paper eq. 9 / F.2.

    Copy ``z`` / mask token, ``PMA_{n_sub}``, ``SAB x 3``, ``Linear``.

    Examples
    --------
    >>> import torch
    >>> dec = PaperDecoder(n_markers=5, dim=16, n_heads=2, ff_dim=32, n_sub=40)
    >>> mask = torch.zeros(3, 40, dtype=torch.bool)
    >>> dec(torch.randn(3, 16), mask, mask_token=torch.zeros(16)).shape
    torch.Size([3, 40, 5])
    """

    def __init__(
        self,
        n_markers: int,
        dim: int,
        n_heads: int,
        ff_dim: int,
        n_sub: int,
        depth: int = 3,
        block: str = "sab",
        n_inducing: int = 32,
    ) -> None:
        super().__init__()
        self.unpool = PMA(dim, n_heads, ff_dim, n_seeds=n_sub)
        self.blocks = _set_blocks(block, depth, dim, n_heads, ff_dim, n_inducing)
        self.out = nn.Linear(dim, n_markers)

    def forward(
        self,
        z: Tensor,
        mask: Tensor,
        generator: torch.Generator | None = None,
        mask_token: Tensor | None = None,
    ) -> Tensor:
        """Reconstruct ``(B, n_sub, d)`` from ``z`` ``(B, D)``.

        Also takes the masks ``(B, n)`` and the encoder's mask token ``(D,)`` (paper F.2: "use
        the masking token").
        """
        if mask_token is None:
            raise ValueError("PaperDecoder needs the encoder's mask_token (paper F.2).")
        copied = torch.where(mask.unsqueeze(-1), mask_token.to(z.dtype), z.unsqueeze(1))
        return self.out(self.blocks(self.unpool(copied)))


def build_decoder(config: MaestroConfig) -> nn.Module:
    """The decoder named by ``config.decoder``."""
    common = dict(
        n_markers=config.n_markers,
        dim=config.latent_dim,
        n_heads=config.n_heads,
        ff_dim=config.ff_dim,
        depth=config.decoder_depth,
        block=config.decoder_block,
        n_inducing=config.n_inducing,
    )
    if config.decoder == "paper":
        return PaperDecoder(n_sub=config.n_sub, **common)
    return QueryDecoder(**common)
