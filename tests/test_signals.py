"""SIGTERM during ``pretrain``: the state is saved and the process ends with a non-zero status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import maestro_sc as mst
from maestro_sc.tl import MaestroModel

#: A child process that trains a tiny model for far longer than the test waits. It writes
#: ``marker`` once two training steps are complete, and prints AFTER if ``pretrain`` returns.
CHILD = textwrap.dedent(
    """
    import pathlib
    import sys

    import torch

    torch.set_num_threads(1)
    import maestro_sc as mst
    from maestro_sc.model import config
    from maestro_sc.train.module import MaestroTrainingPlan

    marker, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
    tiny = dict(
        latent_dim=8, ff_dim=16, n_heads=2, n_inducing=4, n_sub=32, head_dim=16,
        head_hidden=16, head_bottleneck=8, n_prototypes=4, batch_size=2, min_steps=0,
    )
    original = MaestroTrainingPlan.on_train_batch_end

    def announce(self, *args):
        original(self, *args)
        if self.global_step >= 2 and not marker.exists():
            marker.write_text(str(self.global_step))

    MaestroTrainingPlan.on_train_batch_end = announce
    adata = mst.datasets.synthetic_cohort(n_samples=6, cells_per_sample=200, random_state=0)
    if mode == "cli":
        from maestro_sc.cli import main

        config.PRESETS["cpu"].update(tiny)
        adata.write_h5ad("cells.h5ad")
        argv = ["pretrain", "cells.h5ad", "--sample-key", "sample", "-o", "model"]
        main([*argv, "--preset", "cpu", "--max-epochs", "100000"])
    else:
        checkpoint_dir = "ck" if mode == "checkpoint_dir" else None
        mst.tl.pretrain(
            adata, "sample", preset="cpu", max_epochs=100_000, progress=False,
            checkpoint_dir=checkpoint_dir, **tiny,
        )
    print("AFTER", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("mode", ["default", "checkpoint_dir", "cli"])
def test_sigterm_saves_the_model_and_exits_nonzero(tmp_path, mode):
    script, marker = tmp_path / "child.py", tmp_path / "training_started"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(marker), mode],
            cwd=tmp_path,
            stdout=out,
            stderr=err,
            env=env,
        )
        try:
            deadline = time.monotonic() + 240
            while not marker.exists():
                assert proc.poll() is None, (tmp_path / "err.txt").read_text()[-3000:]
                assert time.monotonic() < deadline, "training did not start within 240 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stdout, stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), stderr[-3000:]
    assert "AFTER" not in stdout and "Saved the model" not in stdout
    saved = {
        "default": tmp_path / f"maestro_interrupted_{proc.pid}",
        "checkpoint_dir": tmp_path / "ck" / "interrupted",
        "cli": tmp_path / "model",
    }[mode].resolve()
    assert "SIGTERM" in stderr and str(saved) in stderr, stderr[-3000:]
    model = MaestroModel.load(saved)
    assert model.summary["interrupted"]
    assert model.summary["steps"] >= int(marker.read_text()) >= 2
    assert len(model.history) == model.summary["steps"]
    if mode == "checkpoint_dir":
        assert (tmp_path / "ck" / "interrupted.ckpt").is_file()
        assert str(tmp_path.resolve() / "ck" / "interrupted.ckpt") in stderr


def test_sigterm_dir_is_checked_before_training(cohort):
    with pytest.raises(TypeError, match="sigterm_dir"):
        mst.tl.pretrain(cohort, "sample", preset="cpu", sigterm_dir=3, progress=False)
