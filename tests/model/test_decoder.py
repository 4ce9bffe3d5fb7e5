"""Decoders (paper eq. 9 / F.2 and the query decoder): no collapse, gradient reaches z."""

import pytest
import torch

from maestro_sc.model.decoder import PaperDecoder, QueryDecoder
from maestro_sc.model.masking import nrbm_mask


def decoders():
    common = dict(n_markers=5, dim=16, n_heads=2, ff_dim=32)
    return {
        "queries": QueryDecoder(**common),
        "queries-isab": QueryDecoder(**common, block="isab", n_inducing=4),
        "paper": PaperDecoder(**common, n_sub=40),
    }


@pytest.mark.parametrize("kind", ["queries", "queries-isab", "paper"])
def test_rows_not_collapsed_and_gradient_reaches_z(kind):
    decoder = decoders()[kind]
    z = torch.randn(3, 16, requires_grad=True)
    mask = nrbm_mask(torch.randn(3, 40, 5), 0.4)
    out = decoder(z, mask, mask_token=torch.randn(16))
    assert out.shape == (3, 40, 5)
    rows = out[0].detach()
    distances = torch.cdist(rows, rows) + torch.eye(40) * 1e9
    assert distances.min() > 1e-4  # every output cell differs from every other
    assert rows.std(dim=0).mean() > 0.05 * rows.abs().mean()
    out.square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum(dim=1).min() > 0


def test_query_decoder_any_size_and_depends_on_z():
    decoder = decoders()["queries"]
    for n in (1, 7, 300):
        assert decoder(torch.randn(2, 16), torch.zeros(2, n, dtype=torch.bool)).shape == (2, n, 5)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    z = torch.randn(1, 16).expand(2, -1)
    a = decoder(z, mask, torch.Generator().manual_seed(1))
    b = decoder(z + 1.0, mask, torch.Generator().manual_seed(1))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a[0], decoder(z, mask, torch.Generator().manual_seed(1))[0])


def test_paper_decoder_needs_mask_token():
    with pytest.raises(ValueError, match="mask_token"):
        decoders()["paper"](torch.randn(1, 16), torch.zeros(1, 40, dtype=torch.bool))
