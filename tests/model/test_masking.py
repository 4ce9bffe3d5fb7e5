"""NRBM (paper 3.2.1, C.1) with the exact-count fix, random masking and multi-rate views."""

import math

import numpy as np
import pytest
import torch

from maestro_sc.model.masking import block_pattern, multi_rate_masks, n_masked, nrbm_mask

RATES = np.linspace(0, 0.99, 67)


def runs(flags: torch.Tensor) -> int:
    """Number of maximal runs of True."""
    f = flags.int()
    return int(f[0]) + int(((f[1:] - f[:-1]) == 1).sum())


@pytest.mark.parametrize("n", [1, 2, 7, 101, 999])
def test_nrbm_masks_exactly_floor_rate_n(n):
    x = torch.randn(3, n, 4)
    for rate in RATES:
        k = n_masked(n, rate)
        assert k == math.floor(rate * n + 1e-9) and k < n
        assert rate * n - 1 < k <= rate * n + 1e-6
        counts = nrbm_mask(x, float(rate)).sum(dim=1)
        assert counts.tolist() == [k] * 3, (n, rate)


@pytest.mark.parametrize("n", [7, 101, 999])
def test_block_pattern_uses_paper_block_size(n):
    for rate in RATES:
        pattern, room = block_pattern(n, float(rate))
        k = int(pattern.sum())
        assert k == n_masked(n, rate) and room >= 0
        assert not pattern[n - room :].any()
        if k:
            b = max(1, math.floor(k / (n / k)))  # paper C.1
            # blocks of about b cells (at most one extra from the remainder), unless they touch
            assert runs(pattern) <= max(1, k // b)


def test_nrbm_blocks_are_contiguous_in_similarity_order():
    n, rate = 199, 0.3
    x = torch.randn(1, n, 6)
    gen = torch.Generator().manual_seed(3)
    mask = nrbm_mask(x, rate, gen)[0]
    expected_runs = runs(block_pattern(n, rate)[0])
    unit = torch.nn.functional.normalize(x[0], dim=-1)
    # some cell is the reference: in its cosine order the mask is the shifted block pattern
    found = [
        r
        for r in range(n)
        if runs(mask[(unit @ unit[r]).argsort(descending=True)]) == expected_runs
    ]
    assert found
    assert expected_runs > 1  # the pattern is really made of several blocks


def test_nrbm_is_reproducible_with_a_generator():
    x = torch.randn(2, 50, 3)
    a = nrbm_mask(x, 0.4, torch.Generator().manual_seed(1))
    b = nrbm_mask(x, 0.4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_random_and_none_modes():
    x = torch.randn(2, 101, 3)
    masks = multi_rate_masks(x, (0.2, 0.5, 0.9), "random")
    assert masks.sum(dim=1).tolist() == [20, 50, 90] * 2
    assert not multi_rate_masks(x, (0.2, 0.5), "none").any()
    with pytest.raises(ValueError, match="mask mode"):
        multi_rate_masks(x, (0.2,), "stripes")


def test_multi_rate_views_are_sample_major():
    x = torch.randn(3, 40, 3)
    x[1] *= -1  # a different similarity structure per sample
    masks = multi_rate_masks(x, (0.2, 0.4, 0.6, 0.8), "block")
    assert masks.shape == (12, 40)
    assert masks.sum(dim=1).tolist() == [8, 16, 24, 32] * 3
