"""Config round trip, validation and presets (with their parameter counts)."""

import json

import pytest
import torch

from maestro_sc.model import PRESETS, Maestro, MaestroConfig, parameter_counts, preset


def test_round_trip_through_json():
    cfg = preset("cpu", n_markers=30, teacher_max_cells=5000, readout="pma+mass")
    again = MaestroConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.mask_rates, tuple)


def test_paper_preset_is_the_paper():
    cfg = preset("paper", n_markers=30)
    assert (cfg.latent_dim, cfg.ff_dim, cfg.n_heads, cfg.n_inducing) == (1024, 2048, 4, 2500)
    assert (cfg.n_isab, cfg.decoder, cfg.decoder_depth, cfg.decoder_block) == (3, "paper", 3, "sab")
    assert cfg.n_sub == 10_000 and cfg.mask_rates == (0.2, 0.4, 0.6, 0.8)
    assert cfg.mask_mode == "block" and cfg.readout == "pma"
    assert (cfg.student_temp, cfg.teacher_temp) == (0.1, 0.07)
    assert cfg.ema_momentum == cfg.ema_final == 0.999
    assert (cfg.lr, cfg.lr_final, cfg.batch_size) == (1e-4, 1e-8, 1)


def test_presets_and_auto():
    cpu = preset("cpu")
    assert (cpu.latent_dim, cpu.ff_dim, cpu.n_heads, cpu.n_inducing) == (64, 128, 4, 32)
    assert cpu.decoder == "queries" and len(cpu.mask_rates) == 4 and cpu.batch_size == 8
    assert (cpu.ema_momentum, cpu.ema_final) == (0.99, 1.0)
    auto = preset("auto")
    assert auto == preset("gpu" if torch.cuda.is_available() else "cpu")
    assert preset("gpu").latent_dim > cpu.latent_dim


def test_bad_keys_and_values():
    with pytest.raises(TypeError, match="latent_dim"):
        preset("cpu", latentdim=3)
    with pytest.raises(TypeError, match="Valid keys"):
        MaestroConfig.from_dict({"n_markers": 3, "colour": "red"})
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    with pytest.raises(ValueError, match="decoder"):
        MaestroConfig(decoder="mlp")
    with pytest.raises(ValueError, match="divisible"):
        MaestroConfig(latent_dim=10, n_heads=4)
    with pytest.raises(ValueError, match="mask_rates"):
        MaestroConfig(mask_rates=(0.5, 1.0))
    with pytest.raises(ValueError, match="n_markers"):
        Maestro(MaestroConfig())


def test_parameter_counts_per_preset(capsys):
    rows = {name: parameter_counts(preset(name, n_markers=30)) for name in PRESETS}
    with capsys.disabled():
        print("\nparameters (30 markers):", {k: v["total"] for k, v in rows.items()})
    assert rows["cpu"]["total"] < rows["gpu"]["total"] < rows["paper"]["total"]
    # the paper decoder's PMA seeds alone are n_sub x D
    assert rows["paper"]["decoder"] > 10_000 * 1024
    small = preset("cpu", n_markers=30)
    model = Maestro(small)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == parameter_counts(small)["total"]
