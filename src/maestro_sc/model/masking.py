"""Non-random block masking (NRBM, paper 3.2.1 and appendix C.1), random masking, multi-rate views.

NRBM orders the cells of a set by cosine similarity to a random reference cell and masks
contiguous blocks in that order. One fix to the appendix: exactly ``floor(rho * n)``
cells are masked for every rate. The appendix's block size ``b = max(1, floor(k / (n / k)))`` is
kept; ``max(1, k // b)`` masked blocks share the ``k`` masked cells (the remainder extends the
first blocks by one), unmasked gaps of ``b`` cells (fewer if the unmasked cells run short)
separate them, and the pattern starts at a random offset. The appendix's final shuffle is not
needed: the encoder is permutation invariant and the cells are never reordered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# maestro.py takes both helpers from here
from ._random import rand as rand
from ._random import randn as randn


def n_masked(n: int, rate: float) -> int:
    """Number of masked cells, ``floor(rate * n)`` (paper C.1), robust to float round-off."""
    return min(n, math.floor(rate * n + 1e-9))


def block_pattern(n: int, rate: float) -> tuple[Tensor, int]:
    """Mask pattern in similarity order starting at offset 0, and the free room for an offset.

    Returns a bool tensor of length ``n`` with exactly ``floor(rate * n)`` ``True`` values in
    ``max(1, k // b)`` contiguous blocks, and the number of trailing unmasked cells (a random
    shift in ``[0, room]`` keeps every block inside the set).

    Examples
    --------
    >>> pattern, room = block_pattern(20, 0.5)
    >>> "".join(str(int(v)) for v in pattern), room
    ('11111000001111100000', 5)
    """
    k = n_masked(n, rate)
    pattern = torch.zeros(n, dtype=torch.bool)
    if k == 0:
        return pattern, n
    block = max(1, math.floor(k * k / n))  # paper C.1: b = max(1, floor(m / (n / m)))
    n_blocks = max(1, k // block)
    sizes = [k // n_blocks + (i < k % n_blocks) for i in range(n_blocks)]
    gap = min(block, (n - k) // n_blocks)
    start = 0
    for size in sizes:
        pattern[start : start + size] = True
        start += size + gap
    used = k + gap * (n_blocks - 1)
    return pattern, n - used


def nrbm_mask(x: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Non-random block mask of a batch of sets, paper 3.2.1 / C.1 (exact count).

    Parameters
    ----------
    x
        Cells ``(B, n, d)``; similarities use these values.
    rate
        Mask rate ``rho`` in ``[0, 1)``; exactly ``floor(rho * n)`` cells per set are masked.
    generator
        Random generator for the reference cells and offsets.

    Returns
    -------
    Bool mask ``(B, n)``, ``True`` = masked.

    Examples
    --------
    >>> import torch
    >>> nrbm_mask(torch.randn(3, 101, 5), 0.3).sum(dim=1).tolist()
    [30, 30, 30]
    """
    b, n, _ = x.shape
    pattern, room = block_pattern(n, rate)
    ref = (rand((b,), generator, x.device) * n).long().clamp_max(n - 1)
    unit = torch.nn.functional.normalize(x, dim=-1)
    similarity = (unit @ unit[torch.arange(b, device=x.device), ref].unsqueeze(-1)).squeeze(-1)
    order = similarity.argsort(dim=1, descending=True)
    offset = (rand((b,), generator, x.device) * (room + 1)).long().clamp_max(room)
    pos = torch.arange(n, device=x.device) - offset.unsqueeze(1)
    in_order = (pos >= 0) & pattern.to(x.device)[pos.clamp_min(0)]
    return torch.zeros_like(in_order).scatter_(1, order, in_order)


def random_mask(
    b: int, n: int, rate: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Exactly ``floor(rate * n)`` uniformly random cells masked in each of ``b`` sets."""
    rank = rand((b, n), generator, device).argsort(dim=1).argsort(dim=1)
    return rank < n_masked(n, rate)


def multi_rate_masks(
    x: Tensor,
    rates: Sequence[float],
    mode: str = "block",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Masks of one view per rate for every set, as one batch (paper F.2: 4 views).

    Parameters
    ----------
    x
        Cells ``(B, n, d)``.
    rates
        One view per rate.
    mode
        ``"block"`` (NRBM), ``"random"`` or ``"none"``.
    generator
        Random generator.

    Returns
    -------
    Bool mask ``(B * V, n)`` ordered sample-major: rows ``i * V .. i * V + V - 1`` are the
    views of set ``i`` (matching ``x.repeat_interleave(V, dim=0)``).

    Examples
    --------
    >>> import torch
    >>> multi_rate_masks(torch.randn(2, 50, 4), (0.2, 0.8)).sum(dim=1).tolist()
    [10, 40, 10, 40]
    """
    b, n, _ = x.shape
    if mode == "none":
        return torch.zeros(b * len(rates), n, dtype=torch.bool, device=x.device)
    if mode == "block":
        per_rate = [nrbm_mask(x, rate, generator) for rate in rates]
    elif mode == "random":
        per_rate = [random_mask(b, n, rate, generator, x.device) for rate in rates]
    else:
        raise ValueError(f"mask mode {mode!r} is not one of ('block', 'random', 'none').")
    return torch.stack(per_rate, dim=1).reshape(b * len(rates), n)
