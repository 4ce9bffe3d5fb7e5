"""Set-transformer attention blocks (paper 3.1): MHA, MAB, SAB, ISAB, PMA.

Every block takes batched sets ``(B, n, D)``. Blocks whose queries are few and whose keys are all
cells (``MAB(I, X)`` inside ISAB, and PMA) also have a *streamed* form that visits the keys in
chunks and merges the softmax with a running log-sum-exp, so a set of 10^6 cells never needs an
``n x m`` score matrix at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices ``[0, size), [size, 2 size), ...`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class MultiheadAttention(nn.Module):
    """Multi-head attention, paper eq. 1-2, computed by ``scaled_dot_product_attention``.

    Keys and values share one fused projection. :meth:`streamed` gives the same result for few
    queries over many keys, visiting the keys chunk by chunk.
    """

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        # (B, L, D) -> (B, heads, L, head_dim)
        b, n, _ = x.shape
        return x.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        b, _, n, _ = x.shape
        return self.out(x.transpose(1, 2).reshape(b, n, self.n_heads * self.head_dim))

    def queries(self, x: Tensor) -> Tensor:
        """Per-head queries ``(B, heads, L, head_dim)``, scaled by ``1/sqrt(d_k)`` (eq. 1)."""
        return self._split(self.q(x)) / math.sqrt(self.head_dim)

    def keys_values(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head keys and values, each ``(B, heads, L, head_dim)``."""
        k, v = self.kv(y).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: Tensor, y: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """``MHA(X, Y, Y)``: queries from ``x`` ``(B, Lq, D)``, keys/values from ``y``.

        ``key_bias`` ``(B, Lk)`` is added to every query's scores on each key: ``log w`` makes a
        key count as ``w`` identical keys (see :meth:`SetEncoder.forward
        <maestro_sc.model.encoder.SetEncoder.forward>`).
        """
        k, v = self.keys_values(y)
        if k.shape[-2] == 1 and key_bias is None:
            # a softmax over one key is 1: every query receives that key's value, whatever the
            # query. The query projection, whose gradient is exactly 0 here either way, stays in
            # the graph at no cost so that data-parallel training sees every parameter used.
            single = self._merge(v) + 0.0 * self.q(x[:, :1]).sum()
            return single.expand(-1, x.shape[1], -1)
        q = self._split(self.q(x))
        mask = None if key_bias is None else key_bias[:, None, None, :].to(q.dtype)
        return self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    def weights(self, x: Tensor, y: Tensor) -> Tensor:
        """Attention probabilities ``(B, heads, Lq, Lk)`` of ``MHA(X, Y, Y)``."""
        k, _ = self.keys_values(y)
        return torch.softmax(self.queries(x) @ k.transpose(-1, -2), dim=-1)

    def streamed(self, x: Tensor, y: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
        """``MHA(X, Y, Y)`` over key chunks of ``y``, merged by a running log-sum-exp.

        Returns the output ``(B, Lq, D)`` and the log normaliser ``(B, heads, Lq)`` of each
        query's softmax (used to recover attention weights chunk by chunk).
        """
        # float32 accumulation: a bf16 running sum over 10^6 cells would lose the small terms
        q = self.queries(x).float()
        run_max = q.new_full((*q.shape[:-1], 1), -math.inf)
        denom = q.new_zeros(*q.shape[:-1], 1)
        acc = torch.zeros_like(q)
        for sl in chunks(y.shape[1], chunk_size):
            k, v = (t.float() for t in self.keys_values(y[:, sl]))
            scores = q @ k.transpose(-1, -2)
            new_max = torch.maximum(run_max, scores.amax(dim=-1, keepdim=True))
            rescale = torch.exp(run_max - new_max)
            p = torch.exp(scores - new_max)
            denom = denom * rescale + p.sum(dim=-1, keepdim=True)
            acc = acc * rescale + p @ v
            run_max = new_max
        log_norm = (run_max + denom.log()).squeeze(-1)
        return self._merge(acc / denom), log_norm

    def chunk_weights(self, x: Tensor, y_chunk: Tensor, log_norm: Tensor) -> Tensor:
        """Attention weights of queries ``x`` on one key chunk, given the full log normaliser."""
        k, _ = self.keys_values(y_chunk)
        return torch.exp(self.queries(x) @ k.transpose(-1, -2) - log_norm.unsqueeze(-1))


class SwiGLU(nn.Module):
    """Cell-wise feed-forward ``W2 (silu(W1 x) * W3 x)`` (Shazeer 2020; paper F.2)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``W_down (SiLU(x W_gate) * x W_up)``, same shape as ``x``."""
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MAB(nn.Module):
    """Multi-head attention block, paper eq. 3-4 (post-LN).

    ``MAB(X, Y) = LN(H + FF(H))``, ``H = LN(X + MHA(X, Y, Y))`` with a SwiGLU ``FF``.
    """

    def __init__(self, dim: int, n_heads: int, ff_dim: int) -> None:
        super().__init__()
        self.attn = MultiheadAttention(dim, n_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = SwiGLU(dim, ff_dim)
        self.norm2 = nn.LayerNorm(dim)

    def finish(self, x: Tensor, attended: Tensor) -> Tensor:
        """The residual, LayerNorm and FF part, given ``MHA(X, Y, Y)``."""
        h = self.norm1(x + attended)
        return self.norm2(h + self.ff(h))

    def forward(self, x: Tensor, y: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """``MAB(X, Y)``: queries ``x`` ``(B, n, D)`` attend to ``y`` ``(B, m, D)``.

        ``key_bias`` as in :meth:`MultiheadAttention.forward`.
        """
        return self.finish(x, self.attn(x, y, key_bias))

    def streamed(self, x: Tensor, y: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
        """Same as ``forward`` for few queries ``x`` over many keys ``y``, chunked over ``y``.

        Also returns the attention log normaliser, see :meth:`MultiheadAttention.streamed`.
        """
        attended, log_norm = self.attn.streamed(x, y, chunk_size)
        return self.finish(x, attended), log_norm


class SAB(nn.Module):
    """Self-attention block ``SAB(X) = MAB(X, X)``, paper eq. 7."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int) -> None:
        super().__init__()
        self.mab = MAB(dim, n_heads, ff_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``SAB(X)``, same shape as ``x``."""
        return self.mab(x, x)


class ISAB(nn.Module):
    """Induced set-attention block, paper eq. 5.

    ``ISAB_m(X) = MAB(X, H)``, ``H = MAB(I, X)`` with ``m`` learned inducing points ``I``.
    """

    def __init__(self, dim: int, n_heads: int, ff_dim: int, n_inducing: int) -> None:
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(1, n_inducing, dim) / math.sqrt(dim))
        self.mab_induce = MAB(dim, n_heads, ff_dim)
        self.mab_cells = MAB(dim, n_heads, ff_dim)

    def induced(self, x: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """``H = MAB(I, X)``, shape ``(B, m, D)``; ``key_bias`` weights the cells."""
        return self.mab_induce(self.inducing.expand(x.shape[0], -1, -1), x, key_bias)

    def induced_streamed(self, x: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
        """``H = MAB(I, X)`` over cell chunks, and its attention log normaliser."""
        return self.mab_induce.streamed(self.inducing.expand(x.shape[0], -1, -1), x, chunk_size)

    def forward(self, x: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """``ISAB_m(X)``, same shape as ``x``; ``key_bias`` ``(B, n)`` weights the cells."""
        return self.mab_cells(x, self.induced(x, key_bias))


class PMA(nn.Module):
    """Pooling by multi-head attention ``PMA_k(X) = MAB(S, X)``, paper eq. 6, ``k`` seeds."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, n_seeds: int = 1) -> None:
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(1, n_seeds, dim) / math.sqrt(dim))
        self.mab = MAB(dim, n_heads, ff_dim)

    def forward(self, x: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """``PMA_k(X)``, shape ``(B, k, D)``; ``key_bias`` ``(B, n)`` weights the cells."""
        return self.mab(self.seeds.expand(x.shape[0], -1, -1), x, key_bias)

    def streamed(self, x: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
        """``PMA_k(X)`` over cell chunks, and its attention log normaliser."""
        return self.mab.streamed(self.seeds.expand(x.shape[0], -1, -1), x, chunk_size)
