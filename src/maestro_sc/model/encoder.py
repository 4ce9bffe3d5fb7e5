"""The set encoder ``f`` (paper eq. 8): ``Linear(d -> D) -> ISAB_m x 3 -> PMA_1 -> z``.

Two evaluations of the same weights:

- :meth:`SetEncoder.forward` for batches of equally sized sets (training), with the mask token
  of NRBM (paper 3.2.1, F.2) replacing masked cells after the input ``Linear``;
- :meth:`SetEncoder.streamed` for one set of any size (embedding, teacher): only ``MAB(I, X)``
  and PMA see all cells at once, and both are few queries over ``n`` keys, so they run over cell
  chunks with a log-sum-exp merge; the cell-wise ``MAB(X, H)`` runs chunk by chunk too. Memory
  is ``O(n D + chunk (m + ff_dim))`` and the result equals ``forward`` to float tolerance.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .blocks import ISAB, PMA, chunks
from .prototypes import PrototypePool


class _Trace(NamedTuple):
    """Cell states around the last ISAB, kept for the readouts that need its attention."""

    h_prev: Tensor  # input of the last ISAB, (1, n, D)
    induced: Tensor  # its H = MAB(I, h_prev), (1, m, D)
    induce_log_norm: Tensor  # softmax log normaliser of MAB(I, h_prev), (1, heads, m)
    h_last: Tensor  # its output, (1, n, D)


class SetEncoder(nn.Module):
    """Permutation-invariant set encoder, paper eq. 8.

    Parameters
    ----------
    n_markers, dim, n_heads, ff_dim, n_inducing, n_isab
        ``d``, ``D``, heads, SwiGLU hidden width, ``m`` and the number of ISABs.
    n_prototypes
        ``K`` of the prototype-pooling branch (:mod:`maestro_sc.model.prototypes`), whose
        projected composition is added to ``z``; 0 (paper) leaves it out.

    Examples
    --------
    >>> import torch
    >>> enc = SetEncoder(5, 16, 2, 32, 4, 3)
    >>> enc(torch.randn(2, 100, 5)).shape
    torch.Size([2, 16])
    """

    def __init__(
        self,
        n_markers: int,
        dim: int,
        n_heads: int,
        ff_dim: int,
        n_inducing: int,
        n_isab: int,
        n_prototypes: int = 0,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(n_markers, dim)
        self.mask_token = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.isabs = nn.ModuleList(ISAB(dim, n_heads, ff_dim, n_inducing) for _ in range(n_isab))
        self.pool = PMA(dim, n_heads, ff_dim, n_seeds=1)
        self.proto = PrototypePool(n_markers, n_prototypes, dim) if n_prototypes > 0 else None

    def _with_composition(self, z: Tensor, comp: Tensor | None) -> Tensor:
        """``z`` plus the projected prototype composition (unchanged without prototypes)."""
        return z if self.proto is None else z + self.proto.proj(comp).to(z.dtype)

    def cells(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Input ``Linear``; masked cells become the learned mask token (paper C.1 step 5)."""
        h = self.embed(x)
        if mask is not None:
            h = torch.where(mask.unsqueeze(-1), self.mask_token.to(h.dtype), h)
        return h

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        with_mass: bool = False,
        composition: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Encode a batch of sets ``(B, n, d)`` to ``z`` ``(B, D)``.

        ``mask`` ``(B, n)`` marks cells to replace by the mask token. With ``with_mass`` also
        returns the mean attention of the cells over the last ISAB's inducing points
        ``(B, heads, m)``. ``composition`` is ``self.proto(x, mask)`` when the caller already
        has it (computed here otherwise).
        """
        # a mask with no masked cell takes the plain path, which keeps the mask token in the
        # graph (with a zero gradient), as data-parallel training needs of every weight
        if mask is not None and not with_mass and bool(mask.any()):
            z = self._pooled_masked(x, mask)
        else:
            h = self.cells(x, mask)
            for isab in self.isabs[:-1]:
                h = isab(h)
            last = self.isabs[-1]
            induced = last.induced(h)
            h_last = last.mab_cells(h, induced)
            z = self.pool(h_last)[:, 0]
        if self.proto is not None and composition is None:
            composition = self.proto(x, mask)
        z = self._with_composition(z, composition)
        if not with_mass:
            return z
        return z, last.mab_cells.attn.weights(h, induced).mean(dim=2)

    def _pooled_masked(self, x: Tensor, mask: Tensor) -> Tensor:
        """Pooled vectors ``(B, D)`` of masked sets, the mask token computed once per set.

        Every masked cell of a set enters as the same mask token, and every layer treats each
        cell on its own (feed-forward, LayerNorm, its attention over the set's induced points)
        except the attention *over* the cells (``MAB(I, X)`` and PMA). So the masked cells stay
        identical through the encoder, and a set is encoded as its unmasked cells plus one mask
        token whose attention weight counts it ``k`` times (a key bias of ``log k``). The
        result equals encoding all ``n`` cells (to float round-off), at the cost of the
        unmasked ones. Sets with the same number of masked cells (one per mask rate) run
        together.
        """
        n, n_masked = x.shape[1], mask.sum(dim=1)
        parts, order = [], []
        for k in n_masked.unique().tolist():
            rows = (n_masked == k).nonzero().squeeze(1)
            # stable sort on the mask: the unmasked cells first, in their order
            kept = torch.sort(mask[rows].to(torch.uint8), dim=1, stable=True).indices[:, : n - k]
            h = self.embed(x[rows].gather(1, kept.unsqueeze(-1).expand(-1, -1, x.shape[-1])))
            bias = None
            if k:
                token = self.mask_token.to(h.dtype).expand(len(rows), 1, -1)
                h = torch.cat([h, token], dim=1)
                bias = torch.zeros(h.shape[:2], device=h.device)
                bias[:, -1] = math.log(k)
            for isab in self.isabs:
                h = isab(h, bias)
            parts.append(self.pool(h, bias)[:, 0])
            order.append(rows)
        return torch.cat(parts)[torch.cat(order).argsort()]

    def _trace(self, x: Tensor, chunk_size: int) -> _Trace:
        h = torch.cat([self.cells(x[:, sl]) for sl in chunks(x.shape[1], chunk_size)], dim=1)
        for isab in self.isabs[:-1]:
            h = _isab_streamed(isab, h, chunk_size)[0]
        out, induced, log_norm = _isab_streamed(self.isabs[-1], h, chunk_size)
        return _Trace(h, induced, log_norm, out)

    def streamed(
        self,
        x: Tensor,
        chunk_size: int,
        *,
        with_mass: bool = False,
        composition: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Encode one set ``(1, n, d)`` of any size in cell chunks; same result as ``forward``.

        Returns ``z`` ``(1, D)``, and with ``with_mass`` the mass ``(1, heads, m)`` too.
        ``composition`` as in :meth:`forward`.
        """
        trace = self._trace(x, chunk_size)
        z = self.pool.streamed(trace.h_last, chunk_size)[0][:, 0]
        if self.proto is not None and composition is None:
            composition = self.proto.streamed(x, chunk_size)
        z = self._with_composition(z, composition)
        if not with_mass:
            return z
        attn = self.isabs[-1].mab_cells.attn
        mass = sum(
            attn.weights(trace.h_prev[:, sl], trace.induced).sum(dim=2)
            for sl in chunks(x.shape[1], chunk_size)
        )
        return z, mass / x.shape[1]

    def cell_scores(self, x: Tensor, chunk_size: int) -> Tensor:
        """Attention rollout from the pooling seed to each cell of one set ``(1, n, d)``.

        ``score_i = sum_k w_k A_ind[k, i]`` with ``w = a_pool A_cells``: the PMA seed's attention
        over the cells (``a_pool``), times the cells' attention over the last ISAB's induced
        points (``A_cells``), times the inducing points' attention over the cells of that ISAB's
        input (``A_ind``); heads averaged, residual paths ignored. Scores sum to 1.
        """
        trace = self._trace(x, chunk_size)
        last, pool_attn = self.isabs[-1], self.pool.mab.attn
        seeds = self.pool.seeds
        _, pool_log_norm = self.pool.streamed(trace.h_last, chunk_size)
        induced_weight = x.new_zeros(1, 1, trace.induced.shape[1])
        for sl in chunks(x.shape[1], chunk_size):
            a_pool = pool_attn.chunk_weights(seeds, trace.h_last[:, sl], pool_log_norm)
            a_cells = last.mab_cells.attn.weights(trace.h_prev[:, sl], trace.induced)
            induced_weight += a_pool.mean(dim=1) @ a_cells.mean(dim=1)
        inducing = last.inducing
        scores = [
            induced_weight
            @ last.mab_induce.attn.chunk_weights(
                inducing, trace.h_prev[:, sl], trace.induce_log_norm
            ).mean(dim=1)
            for sl in chunks(x.shape[1], chunk_size)
        ]
        return torch.cat(scores, dim=-1).reshape(-1)


def _isab_streamed(isab: ISAB, h: Tensor, chunk_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``ISAB(h)`` in cell chunks; also ``H = MAB(I, h)`` and its log normaliser."""
    induced, log_norm = isab.induced_streamed(h, chunk_size)
    out = torch.empty_like(h)
    for sl in chunks(h.shape[1], chunk_size):
        out[:, sl] = isab.mab_cells(h[:, sl], induced)
    return out, induced, log_norm
