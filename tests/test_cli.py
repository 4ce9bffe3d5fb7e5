"""The maestro-sc command line."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from maestro_sc.cli import build_parser, main


def test_parser_knows_the_commands():
    parser = build_parser()
    args = parser.parse_args(["embed", "x.h5ad", "--sample-key", "donor", "-o", "y.h5ad"])
    assert args.command == "embed" and args.sample_key == "donor" and args.preset == "auto"
    assert parser.parse_args(["demo"]).out == "maestro_demo"


def test_pretrain_then_embed(cohort, tmp_path, capsys):
    cells = tmp_path / "cells.h5ad"
    cohort.write_h5ad(cells)
    model_dir = tmp_path / "model"
    argv = ["pretrain", str(cells), "--sample-key", "sample", "-o", str(model_dir)]
    assert main([*argv, "--max-epochs", "0", "--preset", "cpu"]) == 0
    assert (model_dir / "maestro.json").exists()
    out = tmp_path / "samples.h5ad"
    argv = ["embed", str(cells), "--sample-key", "sample", "--model", str(model_dir)]
    assert main([*argv, "-o", str(out), "--backed"]) == 0
    sdata = ad.read_h5ad(out)
    assert sdata.n_obs == 8 and np.isfinite(sdata.obsm["X_maestro"]).all()
    assert "8 sample embeddings" in capsys.readouterr().out


def test_errors_are_messages_not_tracebacks(cohort, tmp_path, capsys, train):
    cells = tmp_path / "cells.h5ad"
    cohort.write_h5ad(cells)
    model = train(cohort, max_epochs=1)
    model.save(tmp_path / "m")
    code = main(
        [
            "embed",
            str(cells),
            "--sample-key",
            "donor",
            "-o",
            str(tmp_path / "o.h5ad"),
            "--model",
            str(tmp_path / "m"),
        ]
    )
    assert code == 2
    assert "donor" in capsys.readouterr().err
    code = main(["embed", str(tmp_path / "missing.h5ad"), "--sample-key", "sample", "-o", "x"])
    assert code == 2


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n-samples", "8", "--max-epochs", "1", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Linear probe on diagnosis" in printed and "accuracy" in printed
    for name in ("samples.h5ad", "umap.png", "nn_contingency.png", "model/maestro.json"):
        assert (out / name).exists(), name
