"""Run MAESTRO training with Lightning: build the network, fit it on a sample index, report.

:func:`fit_maestro` is the whole run that :func:`maestro_sc.tl.pretrain` asks for once it has
checked its arguments and indexed the cells: the seeded network with its marker scaler and
prototypes, the sample-set DataLoader, the :class:`pytorch_lightning.Trainer` (accelerator,
precision, checkpoints), a fit that survives Ctrl+C and stops cleanly on SIGTERM, and the
codebook readout fitted afterwards. :func:`save_and_terminate` ends the process after a
SIGTERM, once the caller has wrapped the network into a model that can be saved. Nothing here
reads AnnData or knows scanpy: cells come from the :class:`~maestro_sc._data.SampleIndex`.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from .._data import SampleIndex
from .._utils import logger, retained_heap
from ..model.config import MaestroConfig
from ..model.maestro import Maestro
from .data import EpochSampler, SampleSetDataset, collate_sets
from .module import MaestroTrainingPlan

#: Of the pooled training cells, cells used to start the prototypes of prototype pooling
#: (k-means++).
PROTOTYPE_CELLS = 20_000

#: The ``accelerator`` values :func:`resolve_accelerator` accepts.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def resolve_accelerator(accelerator: str, precision: str | None) -> tuple[str, str]:
    """The accelerator and precision to train with, checked against what torch can use.

    ``"auto"`` becomes ``"gpu"`` when CUDA is available, else ``"cpu"``; precision defaults to
    ``"bf16-mixed"`` on a CUDA GPU and ``"32-true"`` otherwise. Raises a ``ValueError`` for an
    unknown accelerator or one that this torch cannot use.
    """
    cuda = torch.cuda.is_available()
    if isinstance(accelerator, str):
        if accelerator not in ACCELERATORS:
            raise ValueError(f"accelerator={accelerator!r} is unknown; use one of {ACCELERATORS}.")
        if accelerator in ("gpu", "cuda") and not cuda:
            raise ValueError(
                f"accelerator={accelerator!r} but PyTorch sees no CUDA GPU (torch "
                f"{torch.__version__}); use accelerator='cpu' or install a CUDA build of torch."
            )
        if accelerator == "mps" and not torch.backends.mps.is_available():
            raise ValueError("accelerator='mps' but MPS is not available; use accelerator='cpu'.")
    if accelerator == "auto":
        accelerator = "gpu" if cuda else "cpu"
    if precision is None:
        precision = "bf16-mixed" if accelerator in ("gpu", "cuda") and cuda else "32-true"
    return accelerator, precision


@dataclass
class TrainingRun:
    """What :func:`fit_maestro` returns: the trained network, its history and how the run ended."""

    #: The trained network, on the CPU (codebook fitted when it has one).
    net: Maestro
    #: One row per training step (:data:`~maestro_sc.train.module.HISTORY_KEYS`, ``lr``, ...).
    history: pd.DataFrame
    #: Optimiser steps and epochs completed.
    steps: int
    epochs: int
    #: Wall time of the fit, seconds (rounded to 0.01).
    seconds: float
    #: Whether Ctrl+C or SIGTERM stopped training early.
    interrupted: bool
    #: Whether a SIGTERM stopped it: the caller then saves and calls :func:`save_and_terminate`.
    sigterm: bool
    trainer: pl.Trainer
    checkpoint_dir: str | Path | None
    #: The SIGTERM handler from before the fit (Lightning installs its own during it).
    previous_sigterm_handler: Any


def steps_per_epoch(config: MaestroConfig, n_samples: int) -> int:
    """Optimiser steps in an epoch of training on ``n_samples`` samples.

    ``config.steps_per_epoch``, else enough steps to cover the samples once and to reach
    ``config.min_steps`` over ``config.max_epochs``.
    """
    return config.steps_per_epoch or max(
        math.ceil(n_samples / config.batch_size),
        math.ceil(config.min_steps / max(1, config.max_epochs)),
    )


def fit_maestro(
    index: SampleIndex,
    samples: Sequence[int],
    config: MaestroConfig,
    *,
    scaler: tuple[np.ndarray, np.ndarray],
    cells: np.ndarray,
    random_state: int,
    accelerator: str,
    devices: int | str,
    strategy: str,
    precision: str,
    checkpoint_dir: str | Path | None,
    resume: str | Path | None,
    num_workers: int,
    progress: bool,
    preset: str,
) -> TrainingRun:
    """Build a :class:`~maestro_sc.model.maestro.Maestro` for ``config`` and train it.

    The arguments are checked by the caller (:func:`maestro_sc.tl.pretrain`); ``accelerator``
    and ``precision`` come from :func:`resolve_accelerator`.

    Parameters
    ----------
    index
        The sample index the cells are streamed from.
    samples
        Positions (in ``index``) of the samples to train on.
    config
        The hyper-parameters, ``n_markers`` set.
    scaler
        Per-marker mean and std of the training cells.
    cells
        A pooled subsample of the training cells ``(N, n_markers)``: the prototypes start at a
        k-means++ draw of (at most :data:`PROTOTYPE_CELLS` of) them, and the codebook readout
        is fitted on them after training.
    random_state
        Seed of the initialisation, of every cell draw and of the masks.
    accelerator, devices, strategy, precision
        Passed to :class:`pytorch_lightning.Trainer`.
    checkpoint_dir
        Folder for Lightning checkpoints (``last.ckpt`` after each epoch), or None.
    resume
        A checkpoint path to continue training from, or None.
    num_workers
        DataLoader worker processes reading cells.
    progress
        Show the progress bar.
    preset
        Name of the preset, for the log.

    Returns
    -------
    The :class:`TrainingRun`. After a SIGTERM, the caller saves what it needs and calls
    :func:`save_and_terminate`; after Ctrl+C the network holds the last completed step.
    """
    pl.seed_everything(random_state, workers=True, verbose=False)
    net = Maestro(config)
    mean, std = scaler
    net.set_scaler(torch.from_numpy(mean), torch.from_numpy(std))
    if config.n_prototypes:
        step = max(1, len(cells) // PROTOTYPE_CELLS)
        net.init_prototypes(torch.from_numpy(np.ascontiguousarray(cells[::step])), random_state)

    per_epoch = steps_per_epoch(config, len(samples))
    total_steps = per_epoch * config.max_epochs
    plan = MaestroTrainingPlan(net, total_steps=total_steps, random_state=random_state)
    loader = _loader(index, samples, config, per_epoch, random_state, num_workers)
    callbacks = []
    if checkpoint_dir is not None:
        from pytorch_lightning.callbacks import ModelCheckpoint

        callbacks.append(
            ModelCheckpoint(
                dirpath=str(checkpoint_dir),
                save_last=True,
                save_top_k=1,
                every_n_epochs=1,
                save_on_train_epoch_end=True,
            )
        )
    logger.info(
        "Training MAESTRO (%s preset) on %d samples x %d markers: %d epochs x %d steps.",
        preset,
        len(samples),
        index.n_markers,
        config.max_epochs,
        per_epoch,
    )
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    start = time.perf_counter()
    with _quiet_lightning():
        trainer = pl.Trainer(
            max_epochs=config.max_epochs,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=checkpoint_dir is not None,
            enable_progress_bar=progress,
            enable_model_summary=False,
            use_distributed_sampler=False,
            gradient_clip_val=config.grad_clip or None,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        if total_steps > 0:
            with retained_heap():  # the steps reuse freed memory instead of faulting pages in
                _fit_interruptible(trainer, plan, loader, resume)
    seconds = round(time.perf_counter() - start, 2)
    net = net.cpu()
    if config.n_codebook:  # the codebook readout is fitted after training, on the pooled cells
        net.fit_codebook(torch.from_numpy(np.ascontiguousarray(cells)), random_state)
    return TrainingRun(
        net=net,
        history=pd.DataFrame(plan.history),
        steps=int(trainer.global_step),
        epochs=int(trainer.current_epoch),
        seconds=seconds,
        interrupted=bool(trainer.interrupted),
        sigterm=bool(trainer.received_sigterm),
        trainer=trainer,
        checkpoint_dir=checkpoint_dir,
        previous_sigterm_handler=sigterm_handler,
    )


def _loader(
    index: SampleIndex,
    samples: Sequence[int],
    config: MaestroConfig,
    per_epoch: int,
    random_state: int,
    num_workers: int,
) -> DataLoader:
    """The DataLoader of sample sets: ``per_epoch`` batches of ``config.batch_size`` samples."""
    dataset = SampleSetDataset(index, samples, config.n_sub, config.teacher_max_cells, random_state)
    sampler = EpochSampler(len(samples), per_epoch * config.batch_size, random_state)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=collate_sets,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def save_and_terminate(run: TrainingRun, model: Any, sigterm_dir: str | Path | None) -> None:
    """After a SIGTERM stopped training: save the model (and a checkpoint), then end the process.

    ``model`` is the trained network wrapped for saving (a
    :class:`~maestro_sc.tl.MaestroModel`: ``model.save(path, overwrite=True)`` and
    ``model.summary``). It goes to ``sigterm_dir`` (default ``checkpoint_dir/interrupted``, or
    ``maestro_interrupted_<pid>`` in the current working directory); with a
    ``checkpoint_dir`` and a single process a Lightning checkpoint
    ``checkpoint_dir/interrupted.ckpt`` is written too. The process then ends as killed by
    SIGTERM (exit status 143), or raises ``SystemExit(143)`` when a handler of its own was
    installed before training or this is not the main thread.

    Lightning's signal handler only sets ``trainer.received_sigterm`` and stops the loop after
    the current step; left alone, ``pretrain`` would return and the program go on as if
    training had finished.
    """
    trainer, checkpoint_dir = run.trainer, run.checkpoint_dir
    if sigterm_dir is None:
        sigterm_dir = (
            Path(checkpoint_dir) / "interrupted"
            if checkpoint_dir is not None
            else Path.cwd() / f"maestro_interrupted_{os.getpid()}"
        )
    saved = []
    if trainer.is_global_zero:
        try:
            path = model.save(sigterm_dir, overwrite=True).resolve()
            saved.append(f"the model (MaestroModel.load) in {path}")
        except Exception as err:  # the process ends either way; say what was lost
            saved.append(f"NOT the model: saving it to {sigterm_dir} failed ({err!r})")
    if checkpoint_dir is not None and trainer.world_size == 1:
        ckpt = (Path(checkpoint_dir) / "interrupted.ckpt").resolve()
        try:
            trainer.save_checkpoint(ckpt, weights_only=False)
            saved.append(f"a checkpoint (resume=) in {ckpt}")
        except Exception as err:
            saved.append(f"NOT the checkpoint: saving {ckpt} failed ({err!r})")
    if saved:
        steps = model.summary.get("steps", 0)
        print(
            f"maestro_sc: training received SIGTERM and stopped after step {steps}; saved "
            + " and ".join(saved)
            + ". Exiting with status 143.",
            file=sys.stderr,
            flush=True,
        )
    sys.stdout.flush()
    previous_handler = run.previous_sigterm_handler
    if previous_handler == signal.SIG_DFL and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
    raise SystemExit(128 + signal.SIGTERM)


def _fit_interruptible(trainer, plan, loader, resume) -> None:
    """``trainer.fit`` that survives Ctrl+C: the model keeps its last completed step.

    Lightning answers a KeyboardInterrupt with ``sys.exit(1)`` and leaves SIGINT ignored; in a
    notebook that would lose the model and disable the next Ctrl+C, so both are undone here.
    A SIGTERM also ends ``fit`` with a ``SystemExit`` (Lightning's ``SIGTERMException``) after
    the current step; it is swallowed here too, and the caller then saves and exits
    (``trainer.received_sigterm``, :func:`save_and_terminate`).
    """
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(plan, train_dataloaders=loader, ckpt_path=str(resume) if resume else None)
    except SystemExit:
        if not trainer.interrupted:
            raise
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)


class _quiet_lightning:
    """Silence Lightning's informational banners (GPU available, etc.) during ``fit``."""

    _names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")

    def __enter__(self):
        self._levels = [logging.getLogger(n).level for n in self._names]
        for n in self._names:
            logging.getLogger(n).setLevel(logging.WARNING)
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*train_dataloader.*num_workers.*")
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        return self

    def __exit__(self, *exc):
        self._warn.__exit__(*exc)
        for n, level in zip(self._names, self._levels):
            logging.getLogger(n).setLevel(level)
        return False
