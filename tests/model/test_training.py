"""A tiny framework-free training run (issue item 9): the loss falls and z separates types."""

import math

import pytest
import torch

from maestro_sc.model import Maestro

from .conftest import tiny_config


def toy_cohort(n_per_type: int = 4, n_cells: int = 300) -> tuple[list[torch.Tensor], list[int]]:
    """Type 0: standard normal cells; type 1: half the cells shifted by +3 on marker 0."""
    samples, types = [], []
    for i in range(2 * n_per_type):
        kind = i % 2
        x = torch.randn(n_cells + 5 * i, 5)
        if kind:
            x[: x.shape[0] // 2, 0] += 3.0
        samples.append(x)
        types.append(kind)
    return samples, types


def train(model: Maestro, samples: list[torch.Tensor], steps: int) -> list[dict[str, float]]:
    cfg = model.config
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * (1 + math.cos(math.pi * s / steps)) / 2
    )
    gen = torch.Generator().manual_seed(0)
    history = []
    for step in range(steps):
        pick = torch.randperm(len(samples), generator=gen)[: cfg.batch_size].tolist()
        student = torch.stack(
            [
                samples[i][torch.randperm(samples[i].shape[0], generator=gen)[: cfg.n_sub]]
                for i in pick
            ]
        )
        out = model.training_loss(student, [samples[i] for i in pick], generator=gen)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        model.update_teacher(model.ema_momentum_at(step, steps))
        history.append({k: float(v.detach()) for k, v in out.items()})
    return history


def separation(model: Maestro, samples: list[torch.Tensor], types: list[int]) -> float:
    """Mean distance of z between types over the mean distance within a type."""
    z = torch.stack([model.encode(x) for x in samples])
    dist = torch.cdist(z, z)
    kind = torch.tensor(types)
    same = kind[:, None] == kind[None, :]
    off_diagonal = ~torch.eye(len(samples), dtype=torch.bool)
    return float(dist[~same].mean() / dist[same & off_diagonal].mean())


def test_training_reduces_loss_and_separates_types():
    samples, types = toy_cohort()
    cells = torch.cat(samples)
    model = Maestro(tiny_config(lr=3e-3, ema_momentum=0.95, ema_final=0.995))
    model.set_scaler(cells.mean(dim=0), cells.std(dim=0))
    untrained = separation(model, samples, types)
    history = train(model, samples, steps=200)

    first = sum(h["loss"] for h in history[:20]) / 20
    last = sum(h["loss"] for h in history[-20:]) / 20
    assert last < 0.8 * first, (first, last)
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["z_std"] > 1e-3  # no collapse of z across the batch
    trained = separation(model, samples, types)
    assert trained > 1.5, trained  # types further apart than samples of one type
    assert trained > 2 * untrained, (untrained, trained)


def test_training_loss_variants():
    """Paper decoder, debiased OT, random masks, teacher cap and unequal teacher sets run."""
    model = Maestro(
        tiny_config(decoder="paper", ot_debiased=True, mask_mode="random", teacher_max_cells=50)
    )
    out = model.training_loss(
        torch.randn(2, 48, 5), [torch.randn(70, 5), torch.randn(300, 5)], torch.Generator()
    )
    out["loss"].backward()
    assert {"loss", "rec", "sd", "z_std", "teacher_entropy"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    cells, mask, recon = model.reconstruct(torch.randn(48, 5), 0.5)
    assert cells.shape == (48, 5) and int(mask.sum()) == 24 and recon.shape == (48, 5)
    with pytest.raises(ValueError, match="teacher set"):
        model.training_loss(torch.randn(2, 48, 5), [torch.randn(70, 5)])
