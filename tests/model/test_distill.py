"""Self-distillation (paper 3.2.3): DINO loss identity, centring, EMA teacher, no teacher grads."""

import itertools

import torch
import torch.nn.functional as F

from maestro_sc.model import Maestro, ema_momentum_at
from maestro_sc.model.distill import (
    ProjectionHead,
    distillation_loss,
    teacher_distribution,
    update_center,
)

from .conftest import tiny_config


def test_loss_is_kl_plus_teacher_entropy():
    s, t, c = torch.randn(3, 4, 10), torch.randn(3, 10), torch.randn(10) * 0.1
    loss = distillation_loss(s, t, c, 0.1, 0.07)
    p_t = F.softmax((t - c) / 0.07, dim=-1).unsqueeze(1).expand(-1, 4, -1)
    log_p_s = F.log_softmax(s / 0.1, dim=-1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1)
    h_t = -(p_t * p_t.log()).sum(-1)
    torch.testing.assert_close(loss, (kl + h_t).mean())
    # minimised (to H(teacher)) when the student reproduces the teacher distribution
    matched = ((t - c) / 0.07 * 0.1).unsqueeze(1).expand(-1, 4, -1)
    torch.testing.assert_close(distillation_loss(matched, t, c, 0.1, 0.07), h_t.mean())


def test_center_update():
    center, logits = torch.ones(4), torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    update_center(center, logits, 0.9)
    torch.testing.assert_close(center, 0.9 + 0.1 * torch.tensor([2.0, 2.0, 2.0, 2.0]))
    p = teacher_distribution(logits, center, 0.07)
    torch.testing.assert_close(p.sum(-1), torch.ones(2))


def test_head_last_layer_is_weight_normalised():
    head = ProjectionHead(16, 32, 8, 10)
    with torch.no_grad():
        head.last.mul_(5.0)
    h = torch.randn(3, 16)
    assert head(h).abs().max() <= 1.0 + 1e-6  # unit bottleneck x unit rows


def test_ema_update_formula_covers_every_parameter():
    model = Maestro(tiny_config())
    with torch.no_grad():
        for p in [*model.encoder.parameters(), *model.head.parameters()]:
            p.add_(torch.randn_like(p))
    student = [p.clone() for p in [*model.encoder.parameters(), *model.head.parameters()]]
    teacher = [
        p.clone() for p in [*model.teacher_encoder.parameters(), *model.teacher_head.parameters()]
    ]
    model.update_teacher(0.9)
    after = [*model.teacher_encoder.parameters(), *model.teacher_head.parameters()]
    assert len(after) == len(student) == len(teacher)
    n_student_params = sum(1 for _ in model.encoder.parameters()) + sum(
        1 for _ in model.head.parameters()
    )
    assert len(after) == n_student_params
    for t_new, t_old, s in zip(after, teacher, student, strict=True):
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * s)


def test_teacher_gets_no_gradients():
    model = Maestro(tiny_config())
    out = model.training_loss(torch.randn(2, 48, 5), [torch.randn(100, 5), torch.randn(80, 5)])
    out["loss"].backward()
    teacher = [*model.teacher_encoder.parameters(), *model.teacher_head.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    model.train()
    assert model.encoder.training and not model.teacher_encoder.training


def test_ema_schedule():
    assert abs(ema_momentum_at(0, 100, 0.99, 1.0) - 0.99) < 1e-12
    assert ema_momentum_at(100, 100, 0.99, 1.0) == 1.0
    values = [ema_momentum_at(s, 100, 0.99, 1.0) for s in range(101)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert ema_momentum_at(37, 100, 0.999, 0.999) == 0.999
    model = Maestro(tiny_config(ema_momentum=0.9, ema_final=0.95))
    assert abs(model.ema_momentum_at(50, 100) - 0.925) < 1e-12
