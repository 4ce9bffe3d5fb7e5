"""Set blocks and the encoder: permutation invariance, any n, streamed == unstreamed."""

import math

import pytest
import torch

from maestro_sc.model import Maestro
from maestro_sc.model.blocks import MultiheadAttention

from .conftest import tiny_config


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_mha_matches_textbook_attention():
    mha = MultiheadAttention(8, 2)
    x, y = torch.randn(3, 4, 8), torch.randn(3, 9, 8)
    q = mha.q(x).view(3, 4, 2, 4).transpose(1, 2)
    k, v = (t.view(3, 9, 2, 4).transpose(1, 2) for t in mha.kv(y).chunk(2, dim=-1))
    heads = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1) @ v
    expected = mha.out(heads.transpose(1, 2).reshape(3, 4, 8))
    torch.testing.assert_close(mha(x, y), expected, atol=1e-6, rtol=1e-5)
    streamed, _ = mha.streamed(x, y, chunk_size=4)
    torch.testing.assert_close(streamed, expected, atol=1e-6, rtol=1e-5)


def test_single_key_attention_is_that_keys_value():
    # softmax over one key is 1: the shortcut must equal the full computation
    mha = MultiheadAttention(8, 2)
    x, y = torch.randn(3, 5, 8), torch.randn(3, 1, 8)
    k, v = mha.keys_values(y)
    full = mha._merge(torch.nn.functional.scaled_dot_product_attention(mha._split(mha.q(x)), k, v))
    out = mha(x, y)
    assert out.shape == (3, 5, 8)
    torch.testing.assert_close(out, full, atol=1e-6, rtol=1e-5)
    out.sum().backward()
    # the query weights stay in the graph (data-parallel training needs every weight used)
    assert mha.q.weight.grad is not None and float(mha.q.weight.grad.abs().max()) == 0.0


def test_key_bias_counts_a_key_as_copies():
    # a key with bias log(3) attends like three identical keys
    mha = MultiheadAttention(8, 2)
    x, y = torch.randn(2, 4, 8), torch.randn(2, 6, 8)
    copies = torch.cat([y, y[:, -1:].expand(-1, 2, -1)], dim=1)
    bias = torch.zeros(2, 6)
    bias[:, -1] = math.log(3)
    torch.testing.assert_close(mha(x, y, key_bias=bias), mha(x, copies), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rates", [(0.2, 0.4, 0.6, 0.8), (0.0, 0.5), (0.9,), (0.0,)])
def test_masked_sets_encoded_once_per_mask_token(rates):
    # the training path encodes each view's unmasked cells and one weighted mask token; it must
    # give the same z and the same gradients as running every cell through the encoder
    from maestro_sc.model.masking import multi_rate_masks

    model = Maestro(tiny_config())
    enc = model.encoder
    x = torch.randn(3, 40, 5)
    masks = multi_rate_masks(x, rates, "block", torch.Generator().manual_seed(1))
    views = x.repeat_interleave(len(rates), dim=0)

    def every_cell():
        h = enc.cells(views, masks)
        for isab in enc.isabs:
            h = isab(h)
        comp = None if enc.proto is None else enc.proto(views, masks)
        return enc._with_composition(enc.pool(h)[:, 0], comp)

    weights = torch.randn(views.shape[0], 16)
    grads = []
    for fn in (every_cell, lambda: enc(views, masks)):
        enc.zero_grad()
        z = fn()
        (z * weights).sum().backward()
        grads.append((z.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()}))
    (z_ref, g_ref), (z_new, g_new) = grads
    torch.testing.assert_close(z_new, z_ref, atol=1e-5, rtol=1e-4)
    assert g_ref.keys() == g_new.keys()
    for name in g_ref:
        torch.testing.assert_close(g_new[name], g_ref[name], atol=1e-5, rtol=1e-4)
    if any(rates):
        assert float(g_new["mask_token"].abs().max()) > 0


def test_permutation_invariance():
    model = Maestro(tiny_config())
    x = torch.randn(300, 5)
    perm = torch.randperm(300)
    for which in ("teacher", "student"):
        assert rel_err(model.encode(x[perm], which=which), model.encode(x, which=which)) < 1e-5
    batch = model.standardize(torch.stack([x, x[perm]]))
    z = model.encoder(batch)
    assert rel_err(z[1], z[0]) < 1e-5


@pytest.mark.parametrize("n", [1, 7, 5000])
def test_any_number_of_cells(n):
    model = Maestro(tiny_config())
    z = model.encode(torch.randn(n, 5))
    assert z.shape == (16,) and torch.isfinite(z).all()
    assert model.encode_batch(torch.randn(2, n, 5)).shape == (2, 16)


@pytest.mark.parametrize("chunk", [1, 16, 100, 257, 1000])
def test_streamed_equals_unstreamed(chunk):
    model = Maestro(tiny_config(readout="pma+mass"))
    x = torch.randn(257, 5)
    unstreamed = model.encode_batch(x[None], which="student")[0].detach()
    streamed = model.encode(x, which="student", chunk_size=chunk)
    assert streamed.shape == (16 + 2 * 6,)
    assert rel_err(streamed[:16], unstreamed[:16]) < 1e-5  # z
    assert rel_err(streamed[16:], unstreamed[16:]) < 1e-5  # attention mass readout


def test_mass_readout_proportions():
    model = Maestro(tiny_config(readout="pma+mass", mass_log=False))
    mass = model.encode(torch.randn(100, 5), chunk_size=33)[16:].view(2, 6)
    torch.testing.assert_close(mass.sum(dim=1), torch.ones(2))
    clr = Maestro(tiny_config(readout="pma+mass")).encode(torch.randn(100, 5))[16:].view(2, 6)
    torch.testing.assert_close(clr.sum(dim=1), torch.zeros(2), atol=1e-5, rtol=0)


def _reference_cell_scores(model: Maestro, x: torch.Tensor) -> torch.Tensor:
    """The rollout written with whole-set attention matrices."""
    enc = model.teacher_encoder
    h = enc.cells(model.standardize(x)[None])
    for isab in enc.isabs[:-1]:
        h = isab(h)
    last = enc.isabs[-1]
    induced = last.induced(h)
    h_last = last.mab_cells(h, induced)
    a_pool = enc.pool.mab.attn.weights(enc.pool.seeds, h_last).mean(1)  # (1, 1, n)
    a_cells = last.mab_cells.attn.weights(h, induced).mean(1)  # (1, n, m)
    a_ind = last.mab_induce.attn.weights(last.inducing, h).mean(1)  # (1, m, n)
    return (a_pool @ a_cells @ a_ind).reshape(-1)


@torch.no_grad()
@pytest.mark.parametrize("chunk", [7, 64, 500])
def test_cell_scores_streamed(chunk):
    model = Maestro(tiny_config())
    x = torch.randn(211, 5)
    scores = model.cell_scores(x, chunk_size=chunk)
    reference = _reference_cell_scores(model, x)
    assert scores.shape == (211,) and (scores >= 0).all()
    assert abs(float(scores.sum()) - 1) < 1e-5
    assert rel_err(scores, reference) < 1e-5


def test_encode_rejects_wrong_shape():
    model = Maestro(tiny_config())
    with pytest.raises(ValueError, match="markers"):
        model.encode(torch.randn(10, 4))
    with pytest.raises(ValueError, match="n >= 1"):
        model.encode(torch.randn(0, 5))
    with pytest.raises(ValueError, match="which"):
        model.encode(torch.randn(3, 5), which="ema")


def test_scaler_standardises():
    model = Maestro(tiny_config())
    mean, std = torch.arange(5.0), torch.tensor([1.0, 2.0, 0.0, 4.0, 5.0])
    model.set_scaler(mean, std)
    out = model.standardize(mean + std)
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        model.set_scaler(torch.zeros(4), torch.ones(4))


@pytest.mark.parametrize("sizes", [(30, 100, 50), (40, 40, 40), (100, 100)])
def test_teacher_pass_equals_streaming_every_set(sizes):
    # sets that fit in a chunk go through the encoder in one pass, larger ones are streamed;
    # either way the teacher's logits and embeddings are those of streaming every set
    model = Maestro(tiny_config(chunk_size=64, n_prototypes=6, readout="pma+proto"))
    teachers = [torch.randn(n, 5) for n in sizes]
    with torch.no_grad():
        logits, emb = model._teacher_forward(teachers, None)
        enc, chunk = model.teacher_encoder, 64
        expected = []
        for cells in teachers:
            x = model._cells(cells)
            comp = enc.proto.streamed(x, chunk)
            expected.append((enc.streamed(x, chunk, composition=comp), comp))
        z = torch.cat([e[0] for e in expected])
        comp = torch.cat([e[1] for e in expected])
    torch.testing.assert_close(logits, model.teacher_head(z), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(emb, model._readout(z, None, comp), atol=1e-5, rtol=1e-4)
