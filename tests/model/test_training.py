"""A tiny run of the Lightning training plan: the loss falls and z separates cell-type mixes."""

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
    """Run ``steps`` steps of the Lightning training plan on the samples; its history."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from maestro_sc._data import SampleIndex
    from maestro_sc.train.data import EpochSampler, SampleSetDataset, collate_sets
    from maestro_sc.train.module import MaestroTrainingPlan

    cfg = model.config
    names = np.repeat([f"s{i}" for i in range(len(samples))], [len(x) for x in samples])
    obs = pd.DataFrame({"sample": names}, index=[f"c{i}" for i in range(len(names))])
    index = SampleIndex(ad.AnnData(torch.cat(samples).numpy(), obs=obs), "sample")
    dataset = SampleSetDataset(index, range(len(samples)), cfg.n_sub, None, random_state=0)
    sampler = EpochSampler(len(samples), steps * cfg.batch_size, random_state=0)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_sets
    )
    plan = MaestroTrainingPlan(model, total_steps=steps, random_state=0)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=cfg.grad_clip,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(plan, loader)
    assert trainer.global_step == steps
    return plan.history


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
