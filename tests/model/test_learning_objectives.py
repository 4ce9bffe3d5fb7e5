"""The sample-contrastive loss, the prototype learning rate, the reconstruction floor and the
codebook readout."""

import math

import numpy as np
import pytest
import torch

from maestro_sc.model import Maestro
from maestro_sc.model.distill import contrastive_loss
from maestro_sc.train.module import MaestroTrainingPlan


def test_contrastive_loss_prefers_own_sample():
    teacher = torch.randn(6, 12)
    views = teacher.unsqueeze(1).repeat(1, 3, 1) + 0.01 * torch.randn(6, 3, 12)
    loss, acc = contrastive_loss(views, teacher, 0.1)
    assert float(acc) == 1.0
    shuffled, acc_shuffled = contrastive_loss(views[torch.randperm(6)], teacher, 0.1)
    assert float(shuffled) > float(loss)
    assert float(acc_shuffled) < 1.0
    # chance level for unrelated views: about log(B)
    noise, _ = contrastive_loss(torch.randn(6, 50, 12), teacher, 1e3)
    assert float(noise) == pytest.approx(math.log(6), abs=0.05)


def test_contrastive_loss_reaches_the_prototypes(tiny):
    cfg = tiny(n_prototypes=6, readout="pma+proto", w_con=1.0, w_rec=0.0, w_sd=0.0)
    model = Maestro(cfg)
    out = model.training_loss(torch.randn(3, 48, 5), [torch.randn(80, 5) for _ in range(3)])
    assert {"con", "con_acc"} <= set(out)
    out["loss"].backward()
    grad = model.encoder.proto.prototypes.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_without_contrastive_nothing_changes(tiny):
    cfg = tiny(n_prototypes=6, readout="pma+proto")
    torch.manual_seed(1)
    a = Maestro(cfg)
    gen = torch.Generator().manual_seed(3)
    students, teachers = torch.randn(2, 48, 5), [torch.randn(70, 5)] * 2
    out = a.training_loss(students, teachers, torch.Generator().manual_seed(3))
    assert "con" not in out
    torch.manual_seed(1)
    b = Maestro(cfg.replace(w_con=0.0, con_temp=0.5))
    again = b.training_loss(students, teachers, gen)
    assert torch.equal(out["loss"], again["loss"])


def test_prototype_learning_rate_scale(tiny):
    cfg = tiny(n_prototypes=6, readout="pma+proto", proto_lr_scale=10.0, lr=1e-3)
    plan = MaestroTrainingPlan(Maestro(cfg), total_steps=10)
    opt = plan.configure_optimizers()["optimizer"]
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    proto = plan.net.encoder.proto
    assert lrs[id(proto.prototypes)] == pytest.approx(1e-2)
    assert lrs[id(proto.log_tau)] == pytest.approx(1e-2)
    assert lrs[id(plan.net.encoder.embed.weight)] == pytest.approx(1e-3)
    n_params = sum(1 for p in plan.net.parameters() if p.requires_grad)
    assert len(lrs) == n_params  # every trainable parameter exactly once


def test_fused_adamw_only_at_full_precision(tiny):
    # the fused AdamW is the same update as the per-tensor loop, to float round-off
    from types import SimpleNamespace

    from maestro_sc.train.module import make_optimizer

    cfg = tiny(n_prototypes=6, readout="pma+proto", proto_lr_scale=10.0)
    torch.manual_seed(0)
    nets = [Maestro(cfg), Maestro(cfg)]
    nets[1].load_state_dict(nets[0].state_dict())
    first = {k: v.clone() for k, v in nets[0].state_dict().items()}
    opts = [make_optimizer(nets[0], fused=True), make_optimizer(nets[1], fused=False)]
    assert opts[0].defaults["fused"] and not opts[1].defaults["fused"]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # the same gradients for both: the updates must agree
        grads = [torch.randn(p.shape, generator=gen) for p in nets[0].parameters()]
        for net, opt in zip(nets, opts, strict=True):
            for p, grad in zip(net.parameters(), grads, strict=True):
                p.grad = grad.clone() if p.requires_grad else None
            opt.step()
    moved = 0.0
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        moved = max(moved, float((a.detach() - first[name]).abs().max()))
    assert moved > 1e-3  # the weights did move: the comparison is not of two starts
    # mixed precision clips unscaled gradients itself, which a fused AdamW refuses
    plan = MaestroTrainingPlan(Maestro(cfg), total_steps=10)
    plan._trainer = SimpleNamespace(precision="bf16-mixed")
    assert not plan.configure_optimizers()["optimizer"].defaults["fused"]
    plan._trainer = SimpleNamespace(precision="32-true")
    assert plan.configure_optimizers()["optimizer"].defaults["fused"]


def test_reconstruction_floor_is_the_same_sample_ot(tiny):
    model = Maestro(tiny())
    same = [torch.randn(400, 5) for _ in range(2)]
    floor = float(model.reconstruction_floor(same, torch.Generator().manual_seed(0)))
    shifted = [s + 3.0 for s in same]
    # two different samples are further apart than two halves of one sample
    x = model.standardize(same[0][:48]).unsqueeze(0)
    y = model.standardize(shifted[0][:48]).unsqueeze(0)
    from maestro_sc.model.sinkhorn import sinkhorn_cost

    apart = float(sinkhorn_cost(x, y, model.config.ot_epsilon))
    assert 0 < floor < apart
    # small samples (fewer cells than n_sub per half) still work
    assert math.isfinite(float(model.reconstruction_floor([torch.randn(7, 5)])))


def test_codebook_readout(tiny):
    cfg = tiny(n_codebook=4, readout="codebook")
    assert cfg.embedding_dim == 4
    model = Maestro(cfg)
    centres = torch.tensor([[0.0] * 5, [6.0] * 5, [-6.0] * 5, [6.0, -6.0, 6.0, -6.0, 6.0]])
    cells = torch.cat([c + 0.1 * torch.randn(200, 5) for c in centres])
    model.set_scaler(cells.mean(0), cells.std(0))
    model.fit_codebook(cells)
    # a sample made of the first two populations only: its composition says so
    sample = torch.cat(
        [centres[0] + 0.1 * torch.randn(30, 5), centres[1] + 0.1 * torch.randn(10, 5)]
    )
    labels = model.codebook_assignments(sample)
    assert len(set(labels[:30].tolist())) == 1 and len(set(labels[30:].tolist())) == 1
    assert labels[0] != labels[-1]
    comp = model.encode(sample, chunk_size=7)
    assert comp.shape == (4,)
    assert float(comp.sum()) == pytest.approx(0.0, abs=1e-5)
    k = 4
    p = torch.zeros(k)
    p[labels[0]], p[labels[-1]] = 0.75, 0.25
    expected = (p + 1 / (4 * k)).log()
    torch.testing.assert_close(comp, expected - expected.mean())
    # "pma+codebook" appends it to z
    both = Maestro(cfg.replace(readout="pma+codebook"))
    both.load_state_dict(model.state_dict(), strict=False)
    both.codebook.copy_(model.codebook)
    both.set_scaler(model.marker_mean, model.marker_std)
    out = both.encode(sample)
    assert out.shape == (cfg.latent_dim + 4,)
    torch.testing.assert_close(out[cfg.latent_dim :], comp)
    batch = both.encode_batch(sample.unsqueeze(0).repeat(2, 1, 1))
    assert batch.shape == (2, cfg.latent_dim + 4)
    torch.testing.assert_close(batch[0, cfg.latent_dim :], comp)


def test_codebook_needs_a_size(tiny):
    with pytest.raises(ValueError, match="n_codebook"):
        tiny(readout="codebook")
    with pytest.raises(ValueError, match="no codebook"):
        Maestro(tiny()).codebook_composition(torch.randn(5, 5))


def test_codebook_with_few_distinct_cells_and_bad_cells(tiny):
    """The codebook shares the prototypes' rule: few distinct cells are each used, cyclically."""
    model = Maestro(tiny(n_codebook=4, readout="codebook"))
    two = torch.tensor([[0.0] * 5, [1.0] * 5]).repeat(10, 1)
    model.set_scaler(two.mean(0), two.std(0))
    model.fit_codebook(two)
    states = model.teacher_encoder.embed(model.standardize(two[:2])).double()
    distinct = torch.from_numpy(np.unique(states.numpy(), axis=0)).to(model.codebook)
    torch.testing.assert_close(model.codebook, distinct[[0, 1, 0, 1]])
    with pytest.raises(ValueError, match="codebook needs finite cells"):
        model.fit_codebook(torch.full((6, 5), float("nan")))
