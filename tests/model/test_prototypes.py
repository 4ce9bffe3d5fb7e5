"""Prototype pooling: counts, masking, streaming, initialisation, readout and training."""

import numpy as np
import pytest
import torch

from maestro_sc.model import Maestro, MaestroConfig
from maestro_sc.model.prototypes import PrototypePool

from .conftest import tiny_config


def _pool(k=4, d=3, dim=8) -> PrototypePool:
    torch.manual_seed(0)
    pool = PrototypePool(d, k, dim)
    with torch.no_grad():
        pool.prototypes.copy_(torch.eye(k, d) * 10)
        pool.log_tau.fill_(0.0)
    return pool


def test_composition_tracks_cell_counts():
    pool = _pool()
    protos = pool.prototypes.detach()
    # 70 cells at prototype 0, 30 at prototype 1, none elsewhere
    x = torch.cat([protos[0].repeat(70, 1), protos[1].repeat(30, 1)]).unsqueeze(0)
    comp = pool(x)[0].detach()
    p = comp.exp() / comp.exp().sum()  # back to (p + eps) up to normalisation
    assert comp[0] > comp[1] > comp[2]
    assert torch.isclose(comp[2], comp[3])
    eps = 1.0 / (4 * pool.prototypes.shape[0])  # the pseudocount of the centred log-ratio
    expected = torch.tensor([0.7, 0.3, 0.0, 0.0]) + eps
    torch.testing.assert_close(p, expected / expected.sum(), atol=1e-5, rtol=1e-4)
    assert abs(float(comp.sum())) < 1e-5  # centred log-ratio


def test_masked_cells_are_left_out():
    pool = _pool()
    x = torch.randn(2, 50, 3) * 5
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[0, :20] = True
    mask[1, 10:] = True
    out = pool(x, mask)
    torch.testing.assert_close(out[0], pool(x[:1, 20:])[0])
    torch.testing.assert_close(out[1], pool(x[1:, :10])[0])


def test_streamed_equals_forward():
    pool = _pool()
    x = torch.randn(1, 1001, 3) * 5
    torch.testing.assert_close(pool.streamed(x, 64), pool(x), atol=1e-5, rtol=1e-5)


def test_initialize_uses_data_cells_and_sets_temperature():
    pool = PrototypePool(3, 5, 8)
    cells = torch.randn(400, 3)
    pool.initialize(cells, random_state=1)
    dist = torch.cdist(pool.prototypes.detach(), cells).min(dim=1).values
    assert float(dist.max()) < 1e-5  # k-means++ picks cells of the data
    d2 = torch.cdist(cells, pool.prototypes.detach()).pow(2).min(dim=1).values
    assert float(pool.log_tau.detach().exp()) == pytest.approx(float(d2.median()), rel=1e-4)
    few = PrototypePool(3, 8, 8)
    few.initialize(cells[:3])  # fewer cells than prototypes: each cell is used, cyclically
    distinct = torch.from_numpy(np.unique(cells[:3].double().numpy(), axis=0)).float()
    torch.testing.assert_close(few.prototypes.detach(), distinct[[0, 1, 2, 0, 1, 2, 0, 1]])
    with pytest.raises(ValueError, match="finite"):
        PrototypePool(3, 4, 8).initialize(torch.full((10, 3), float("nan")))


def test_model_readout_and_teacher_copy():
    model = Maestro(tiny_config(n_prototypes=7, readout="pma+proto"))
    cells = torch.randn(500, 5) * 2 + 1
    model.set_scaler(cells.mean(0), cells.std(0))
    model.init_prototypes(cells)
    assert torch.equal(model.encoder.proto.prototypes, model.teacher_encoder.proto.prototypes)
    emb = model.encode(cells, chunk_size=37)
    assert emb.shape == (model.config.embedding_dim,) == (16 + 7,)
    batch = model.encode_batch(cells.unsqueeze(0), which="teacher")[0]
    torch.testing.assert_close(emb, batch, atol=1e-4, rtol=1e-4)
    # the composition part is the pool's output on the standardised cells
    comp = model.teacher_encoder.proto(model.standardize(cells).unsqueeze(0))[0]
    torch.testing.assert_close(emb[16:], comp, atol=1e-5, rtol=1e-5)


def test_training_moves_prototypes_and_projection():
    model = Maestro(tiny_config(n_prototypes=5))
    cells = torch.randn(300, 5)
    model.init_prototypes(cells)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    proj0 = model.encoder.proto.proj.weight.detach().clone()
    protos0 = model.encoder.proto.prototypes.detach().clone()
    for _ in range(3):
        out = model.training_loss(torch.randn(4, 48, 5), [torch.randn(100, 5)] * 4)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert not torch.equal(model.encoder.proto.proj.weight, proj0)
    assert not torch.equal(model.encoder.proto.prototypes, protos0)


def test_config_checks():
    with pytest.raises(ValueError, match="n_prototypes"):
        MaestroConfig(n_markers=3, readout="pma+proto")
    with pytest.raises(ValueError, match="n_prototypes"):
        MaestroConfig(n_markers=3, n_prototypes=-1)
    assert MaestroConfig(n_markers=3, n_prototypes=9, readout="pma+proto").embedding_dim == 73


def test_assignments_stay_float32_under_autocast():
    pool = _pool()
    x = torch.randn(2, 300, 3) * 5 + 40  # large norms: half-precision distances would fail
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = pool.assignments(x)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, pool.assignments(x))
