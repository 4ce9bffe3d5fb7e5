"""``pretrain`` and ``embed_samples``: the user-facing training and embedding calls.

This module is the public side of training: it checks the arguments, indexes the cells
(:class:`~maestro_sc._data.SampleIndex`), checks them (untransformed values, samples too small
to train on), computes the marker scaler, and wraps the result into a
:class:`~maestro_sc.tl.MaestroModel`; the sample table and its scanpy graph come last. The
network, the Lightning run and its signal handling are in :mod:`maestro_sc.train.runner`.
It runs past 450 lines because the two public functions carry the full user documentation
(about 200 lines of docstring, with examples that run as doctests).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._data import SampleIndex
from .._utils import check_count, check_random_state, logger, torch_threads, warn_overwrite
from ._aggregate import sample_table
from ._model import MaestroModel, check_which, h5ad_safe, match_panel

#: Cells pooled (over all samples) to fit the per-marker standardisation; the prototypes start
#: at a draw of them and the codebook readout is fitted on them (:mod:`maestro_sc.train.runner`).
_SCALER_CELLS = 200_000
#: Cells (from at most ``_RAW_CHECK_SAMPLES`` samples) read to tell raw from transformed values.
_RAW_CHECK_CELLS = 10_000
_RAW_CHECK_SAMPLES = 20
#: A marker whose 99th percentile is above this looks untransformed: arcsinh keeps even the
#: largest 18-bit flow value below 12 (cofactor 5) and standardised values stay in the tens.
_RAW_P99 = 1_000.0


def warn_if_untransformed(index: SampleIndex, *, stacklevel: int) -> None:
    """Warn when the cells look untransformed (a marker's 99th percentile above 1,000).

    Reads a bounded, seeded subsample through the sample index (at most
    ``_RAW_CHECK_CELLS`` cells from ``_RAW_CHECK_SAMPLES`` samples spread over the cohort), so a
    backed file costs a few small reads.
    """
    n_picks = min(index.n_samples, _RAW_CHECK_SAMPLES)
    picks = np.unique(np.linspace(0, index.n_samples - 1, n_picks).round().astype(np.int64))
    per_sample = max(1, _RAW_CHECK_CELLS // len(picks))
    rng = np.random.default_rng(0)  # its own generator: training's draws are not affected
    cells = np.concatenate([index.read(int(i), n=per_sample, random_state=rng) for i in picks])
    if len(cells) == 0:
        return
    p99 = np.percentile(cells, 99, axis=0)
    high = np.flatnonzero(p99 > _RAW_P99)
    if len(high) == 0:
        return
    worst = high[np.argmax(p99[high])]
    warnings.warn(
        f"The values look untransformed: the 99th percentile of {len(high)} of "
        f"{index.n_markers} markers is above {_RAW_P99:,.0f} (largest: "
        f"{index.markers[worst]}, {p99[worst]:,.0f}), while arcsinh-transformed values stay "
        "below about 12. MAESTRO expects transformed values: run "
        "mst.pp.arcsinh(adata, cofactor=5) (mass cytometry; 150 for flow) first, or pass "
        "`layer=` naming a transformed layer. If the values are transformed on another scale, "
        "ignore this warning.",
        UserWarning,
        stacklevel=stacklevel + 1,
    )


def marker_scaler(
    index: SampleIndex, samples: Sequence[int], random_state: int, *, return_cells: bool = False
):
    """Per-marker mean and std over a pooled subsample of the training cells (and the cells)."""
    per_sample = max(1, _SCALER_CELLS // max(1, len(samples)))
    rng = np.random.default_rng(random_state)
    cells = np.concatenate([index.read(i, n=per_sample, random_state=rng) for i in samples])
    mean = cells.mean(axis=0, dtype=np.float64)
    std = cells.std(axis=0, dtype=np.float64)
    constant = [index.markers[j] for j in np.flatnonzero(std < 1e-8)]
    if constant:
        warnings.warn(
            f"Markers {constant} are constant over the training cells; they carry no information.",
            UserWarning,
            stacklevel=4,
        )
    out = mean.astype(np.float32), np.where(std < 1e-8, 1.0, std).astype(np.float32)
    return (*out, cells) if return_cells else out


def trainable_samples(index: SampleIndex, min_cells: int, strict: bool) -> list[int]:
    """Samples with at least ``min_cells`` cells; the others are skipped with a warning."""
    small = [i for i in range(index.n_samples) if index.counts[i] < min_cells]
    if small:
        names = [f"{index.sample_ids[i]} ({index.counts[i]} cells)" for i in small]
        msg = (
            f"{len(small)} samples have fewer than min_cells={min_cells} cells: {names}. "
            "Lower `min_cells` or remove them (mst.pp.filter_samples)."
        )
        if strict:
            raise ValueError(msg)
        warnings.warn(msg + " They are skipped in training.", UserWarning, stacklevel=4)
    keep = [i for i in range(index.n_samples) if index.counts[i] >= min_cells]
    if len(keep) < 2:
        raise ValueError(
            f"Training needs at least 2 samples with >= {min_cells} cells; got {len(keep)} "
            f"(of {index.n_samples}). Add samples or lower `min_cells`."
        )
    return keep


def pretrain(
    adata: Any,
    sample_key: str,
    *,
    preset: str = "auto",
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    precision: str | None = None,
    random_state: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
    sigterm_dir: str | Path | None = None,
    num_workers: int = 0,
    strict: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> MaestroModel:
    """Train a MAESTRO model, self-supervised, on every sample of a cohort.

    Each step draws, for ``batch_size`` samples, a fresh random subset of ``n_sub`` cells (the
    student set; smaller samples are oversampled with replacement) and the sample's full cell
    set for the teacher (or ``teacher_max_cells`` of them), streamed from the sample index, so
    backed files and samples of millions of cells work. Training runs on PyTorch Lightning:
    AdamW with a cosine learning rate, the EMA teacher updated after each step.

    Parameters
    ----------
    adata
        AnnData of cells (in memory or backed ``'r'``), values already transformed
        (e.g. :func:`maestro_sc.pp.arcsinh`); or a MuData with ``mod=``.
    sample_key
        Column of ``obs`` with the sample id of each cell.
    preset
        ``"cpu"``, ``"gpu"``, ``"paper"`` or ``"auto"`` (gpu if CUDA is available, else cpu).
    markers
        Markers to train on (default: all ``var_names``).
    layer
        Read values from ``adata.layers[layer]``.
    mod
        Modality of a MuData.
    max_epochs
        Epochs (default: the preset's). ``0`` gives the untrained model (a control).
    batch_size
        Samples per step (default: the preset's).
    accelerator, devices, strategy, precision
        Passed to :class:`pytorch_lightning.Trainer` (``strategy="ddp"`` for several GPUs;
        precision defaults to ``"bf16-mixed"`` on GPU and ``"32-true"`` on CPU).
    random_state
        Seed of the initialisation, of every cell draw and of the masks.
    checkpoint_dir
        Folder for Lightning checkpoints (``last.ckpt`` after each epoch).
    resume
        A checkpoint path to continue training from.
    sigterm_dir
        Folder the model is saved to if a SIGTERM stops training (see Notes). Default:
        ``checkpoint_dir/interrupted`` with ``checkpoint_dir``, else
        ``maestro_interrupted_<pid>`` in the current working directory.
    num_workers
        DataLoader worker processes reading cells.
    strict
        Raise instead of skipping samples with fewer than ``min_cells`` cells.
    progress
        Show the progress bar.
    **overrides
        Any :class:`~maestro_sc.model.config.MaestroConfig` field, e.g. ``latent_dim=128``.

    Returns
    -------
    The trained :class:`~maestro_sc.tl.MaestroModel`.

    Notes
    -----
    **Ctrl+C (SIGINT)** stops training after the current step and returns the model as it is
    after the last completed step, with a warning and ``summary["interrupted"] = True``.

    **SIGTERM** (``kill``, ``timeout``, a job scheduler) means the process is asked to end, so
    ``pretrain`` does not return. Training stops after the current step; the model as it is
    after the last completed step is saved with :meth:`MaestroModel.save
    <maestro_sc.tl.MaestroModel.save>` to ``sigterm_dir`` (default
    ``checkpoint_dir/interrupted``, or ``maestro_interrupted_<pid>`` in the current working
    directory without ``checkpoint_dir``); with ``checkpoint_dir`` and a single process, a
    Lightning checkpoint ``checkpoint_dir/interrupted.ckpt`` is written too, for ``resume=``.
    A message on stderr names both, and the process then ends as killed by SIGTERM: exit
    status 143 in a shell (``-15`` from :mod:`subprocess`), so scripts and schedulers see that
    the run did not finish. Code after ``pretrain`` does not run. If the process had its own
    SIGTERM handler before ``pretrain``, that handler has been called and ``pretrain`` raises
    ``SystemExit(143)`` instead. Load the saved model with :meth:`MaestroModel.load
    <maestro_sc.tl.MaestroModel.load>`.

    **Memory on Linux.** While it trains, ``pretrain`` asks glibc (``mallopt``) to keep freed
    memory in the process for reuse, as each step frees and allocates the same buffers; when
    training ends that memory is handed back (``malloc_trim``), and freed memory is again
    returned to the system once 64 MiB of it gather at the top of the heap, the most glibc's
    own adaptive rule allows. See the performance notes in the documentation.

    Examples
    --------
    One epoch of one step, to keep the example short (the ``cpu`` preset otherwise trains for
    at least ``min_steps=200`` steps):

    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=8, random_state=0)
    >>> model = mst.tl.pretrain(
    ...     adata, "sample", preset="cpu", max_epochs=1, min_steps=0, progress=False
    ... )
    >>> model.history.shape[0] > 0
    True
    """
    model, _ = _pretrain(
        adata,
        sample_key,
        preset=preset,
        markers=markers,
        layer=layer,
        mod=mod,
        max_epochs=max_epochs,
        batch_size=batch_size,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        random_state=random_state,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        sigterm_dir=sigterm_dir,
        num_workers=num_workers,
        strict=strict,
        progress=progress,
        **overrides,
    )
    return model


def _pretrain(
    adata: Any,
    sample_key: str,
    *,
    preset: str = "auto",
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    precision: str | None = None,
    random_state: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
    sigterm_dir: str | Path | None = None,
    num_workers: int = 0,
    strict: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> tuple[MaestroModel, SampleIndex]:
    """:func:`pretrain`, returning the sample index too (for :func:`embed_samples`).

    A caller that embeds the same cells afterwards then does not index them a second time.
    The arguments are checked and the cells indexed and checked here; the network is built and
    trained by :func:`maestro_sc.train.runner.fit_maestro`.

    Must be called directly by the public function (the warnings' ``stacklevel`` counts on it).
    """
    from ..model.config import preset as make_config
    from ..train.runner import fit_maestro, resolve_accelerator, save_and_terminate

    check_count(max_epochs, "max_epochs", minimum=0, none=True)
    check_count(batch_size, "batch_size", none=True)
    check_count(num_workers, "num_workers", minimum=0)
    check_random_state(random_state)
    if sigterm_dir is not None and not isinstance(sigterm_dir, (str, os.PathLike)):
        raise TypeError(f"`sigterm_dir` must be a folder path, got {type(sigterm_dir).__name__}.")
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    config = make_config(preset, **overrides)
    if config.max_epochs < 0 or config.batch_size < 1:
        raise ValueError("`max_epochs` must be >= 0 and `batch_size` >= 1.")
    accelerator, precision = resolve_accelerator(accelerator, precision)
    index = SampleIndex(adata, sample_key, markers=markers, layer=layer, mod=mod)
    warn_if_untransformed(index, stacklevel=3)
    samples = trainable_samples(index, config.min_cells, strict)
    config.n_markers = index.n_markers
    mean, std, pooled = marker_scaler(index, samples, random_state, return_cells=True)

    run = fit_maestro(
        index,
        samples,
        config,
        scaler=(mean, std),
        cells=pooled,
        random_state=random_state,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        num_workers=num_workers,
        progress=progress,
        preset=preset,
    )
    if run.interrupted and not run.sigterm:
        warnings.warn(
            "Training was interrupted; the model holds the last completed step.",
            UserWarning,
            stacklevel=3,
        )
    summary = {
        "preset": preset,
        "random_state": random_state,
        "sample_key": sample_key,
        "n_samples": len(samples),
        "steps": run.steps,
        "epochs": run.epochs,
        "train_seconds": run.seconds,
        "interrupted": run.interrupted,
        "accelerator": accelerator,
        "precision": str(precision),
        "package_version": __version__,
    }
    if len(run.history):
        summary["final_loss"] = float(run.history["loss"].iloc[-1])
    model = MaestroModel(run.net, index.markers, history=run.history, summary=summary)
    if run.sigterm:
        save_and_terminate(run, model, sigterm_dir)
    return model, index


def embed_samples(
    adata: Any,
    sample_key: str,
    *,
    model: MaestroModel | None = None,
    preset: str = "auto",
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    key_added: str = "X_maestro",
    neighbors: bool = True,
    umap: bool = True,
    n_neighbors: int = 15,
    which: str | None = None,
    chunk_size: int | None = None,
    random_state: int = 0,
    progress: bool = True,
    return_model: bool = False,
    save_model: str | Path | None = None,
    **pretrain_kwargs: Any,
) -> Any:
    """Embed every sample of a cohort with MAESTRO: one vector per sample, from all its cells.

    Without ``model``, a model is first trained with :func:`pretrain` (``preset``, ``markers``,
    ``random_state`` and ``pretrain_kwargs`` go to it); keep it with ``return_model=True`` or
    ``save_model=``. Each sample is then encoded on all of its cells, streamed in chunks, by the
    teacher encoder (``which="student"`` for the student); the result is deterministic. The
    input is not modified.

    Parameters
    ----------
    adata
        AnnData of cells (in memory or backed), or a MuData with ``mod=``. Values already
        transformed (e.g. :func:`maestro_sc.pp.arcsinh`); values that look raw give a warning.
    sample_key
        Column of ``obs`` with the sample id of each cell.
    model
        A trained :class:`MaestroModel`, used as is (default: train one now). With a model,
        the training-only arguments (``preset``, ``markers``, ``save_model`` and every
        ``pretrain_kwargs``) raise a ``ValueError``.
    preset
        Preset for training when ``model`` is None.
    markers
        Markers to train on when ``model`` is None (a model uses its own markers).
    layer
        Read values from ``adata.layers[layer]``.
    mod
        Modality of a MuData.
    key_added
        Key of the embedding in the result's ``obsm``.
    neighbors, umap
        Run :func:`scanpy.pp.neighbors` (``use_rep=key_added``) and :func:`scanpy.tl.umap` on the
        result so scanpy's plots work at once.
    n_neighbors
        Neighbours for the sample graph (capped below the number of samples).
    which
        ``"teacher"`` or ``"student"`` encoder (default: the model's ``embed_with``).
    chunk_size
        Cells per streamed chunk.
    random_state
        Seed for training and UMAP.
    progress
        Show progress bars.
    return_model
        Return ``(sdata, model)``: the model trained here (or the given ``model``), to embed
        more samples with later (``model=``, :meth:`MaestroModel.embed
        <maestro_sc.tl.MaestroModel.embed>`) or to save.
    save_model
        Folder to save the trained model to, with :meth:`MaestroModel.save
        <maestro_sc.tl.MaestroModel.save>`, right after training. It must be new or empty;
        that is checked before training, so a long training is never lost to an existing
        folder. A SIGTERM during training saves the model trained so far there too (see
        :func:`pretrain`), unless ``sigterm_dir`` is given.
    **pretrain_kwargs
        Passed to :func:`pretrain` when ``model`` is None: its arguments (``max_epochs``,
        ``batch_size``, ``accelerator``, ``checkpoint_dir``, ...) and any
        :class:`~maestro_sc.model.config.MaestroConfig` field (e.g. ``latent_dim=128``).

    Returns
    -------
    A sample-level AnnData: one row per sample, ``X`` = per-sample marker means, the embedding
    in ``obsm[key_added]`` (with the ``cpu`` and ``gpu`` presets: the pooled ``z``, then the
    sample's composition over the model's prototypes; ``model.config.embedding_dim`` columns),
    ``uns["maestro"]`` with the config, markers and training summary (and ``saved_model``, the
    folder, with ``save_model``). With ``return_model=True``, the tuple ``(sdata, model)``.

    Raises
    ------
    ValueError
        ``model`` given together with a training-only argument.
    FileExistsError
        ``save_model`` is a file or a non-empty folder (raised before training).

    Examples
    --------
    A short training run (one step; ``max_epochs`` and ``min_steps`` go to :func:`pretrain`):

    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=8, random_state=0)
    >>> sdata = mst.tl.embed_samples(
    ...     adata, sample_key="sample", max_epochs=1, min_steps=0, progress=False
    ... )
    >>> sdata.obsm["X_maestro"].shape[0]
    8

    Keep the trained model to embed new samples with it later:

    >>> sdata, model = mst.tl.embed_samples(
    ...     adata, "sample", max_epochs=1, min_steps=0, progress=False, return_model=True
    ... )
    >>> new = mst.datasets.synthetic_cohort(n_samples=4, random_state=1)
    >>> mst.tl.embed_samples(new, "sample", model=model, progress=False).n_obs
    4
    """
    if model is not None and not isinstance(model, MaestroModel):
        raise TypeError(
            f"`model` must be a MaestroModel (from mst.tl.pretrain or MaestroModel.load), "
            f"got {type(model).__name__}."
        )
    # Checked before training, so a bad argument does not cost a training run.
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty obsm key (str), got {key_added!r}.")
    check_count(n_neighbors, "n_neighbors", minimum=2)
    check_count(chunk_size, "chunk_size", none=True)
    check_random_state(random_state)
    check_which(which)
    if not isinstance(return_model, bool):
        raise TypeError(f"`return_model` must be True or False, got {return_model!r}.")
    if model is not None:
        _check_no_training_arguments(model, preset, markers, save_model, pretrain_kwargs)
        use_markers = match_panel(adata, model.markers, mod=mod)
        index = SampleIndex(adata, sample_key, markers=use_markers, layer=layer, mod=mod)
        warn_if_untransformed(index, stacklevel=2)
    else:
        save_path = None if save_model is None else _check_save_target(save_model)
        if save_path is not None:
            # A SIGTERM during training saves the model where it was asked for.
            pretrain_kwargs.setdefault("sigterm_dir", save_path)
        logger.info("No model given: training one with the %r preset first.", preset)
        model, index = _pretrain(
            adata,
            sample_key,
            preset=preset,
            markers=markers,
            layer=layer,
            mod=mod,
            random_state=random_state,
            progress=progress,
            **pretrain_kwargs,
        )
        if save_path is not None:
            model.save(save_path)
            logger.info("Saved the trained model to %s.", save_path)
    z = model.embed_index(index, which=which, chunk_size=chunk_size, progress=progress)
    sdata = sample_table(index)
    warn_overwrite(sdata.obsm, key_added, "obsm")
    sdata.obsm[key_added] = z.to_numpy(dtype=np.float32)
    info = sdata.uns["maestro"]
    info.update(
        {
            "key_added": key_added,
            "preset": model.summary.get("preset"),
            "random_state": model.summary.get("random_state"),
            "package_version": __version__,
            "markers": list(model.markers),
            "embed_with": which or model.config.embed_with,
            "config": model.config.to_dict(),
            "training": dict(model.summary),
        }
    )
    if mod is not None:
        info["mod"] = mod
    if save_model is not None:
        info["saved_model"] = str(save_model)
    sdata.uns["maestro"] = h5ad_safe(info)
    if neighbors or umap:
        sample_graph(
            sdata, key_added, n_neighbors=n_neighbors, umap=umap, random_state=random_state
        )
    return (sdata, model) if return_model else sdata


def _check_no_training_arguments(
    model: MaestroModel,
    preset: str,
    markers: Sequence[str] | None,
    save_model: Any,
    pretrain_kwargs: dict[str, Any],
) -> None:
    """Raise if ``embed_samples`` got a model and an argument that only applies to training."""
    given = []
    if preset != "auto":
        given.append("preset")
    if markers is not None and (isinstance(markers, str) or set(markers) != set(model.markers)):
        given.append("markers")
    given += sorted(pretrain_kwargs)
    if given:
        names = ", ".join(f"`{name}`" for name in given)
        raise ValueError(
            f"{names} only apply when embed_samples trains a model; with `model=` the given "
            f"model is used as is (its config, its {len(model.markers)} markers and its weights). "
            "Drop them, or leave out `model=` to train a new model with them."
        )
    if save_model is not None:
        raise ValueError(
            "`save_model` saves a model trained by embed_samples; with `model=` nothing is "
            "trained. Save the given model with model.save(path) instead."
        )


def _check_save_target(save_model: Any) -> Path:
    """The folder ``save_model`` names, checked to be new or empty before any training."""
    if not isinstance(save_model, (str, os.PathLike)):
        raise TypeError(
            f"`save_model` must be a folder path (str or Path), got {type(save_model).__name__}."
        )
    path = Path(save_model)
    if path.exists() and not path.is_dir():
        raise FileExistsError(
            f"save_model={str(path)!r} is a file, but a model is saved as a folder. Pass the "
            "path of a new or empty folder."
        )
    if path.is_dir() and any(path.iterdir()):
        raise FileExistsError(
            f"save_model={str(path)!r} exists and is not empty; nothing was trained. Pass a new "
            "or empty folder, or remove this one first."
        )
    return path


def sample_graph(sdata: Any, use_rep: str, *, n_neighbors: int, umap: bool, random_state: int):
    """Neighbours (and UMAP) of a sample-level AnnData, with ``n_neighbors`` capped."""
    import scanpy as sc

    n = sdata.n_obs
    if n < 3:
        warnings.warn(
            f"Only {n} samples: no neighbour graph or UMAP computed.", UserWarning, stacklevel=3
        )
        return
    k = min(n_neighbors, n - 1)
    # numba, behind scanpy's neighbours and UMAP, sets the OpenMP thread count that torch
    # shares; a changed count changes the last bits of later embeddings, so the same model would
    # embed the same cells differently before and after the first embed_samples of a session
    with torch_threads():
        sc.pp.neighbors(sdata, use_rep=use_rep, n_neighbors=k, random_state=random_state)
        if umap:
            if n < 4:
                warnings.warn(f"Only {n} samples: UMAP skipped.", UserWarning, stacklevel=3)
                return
            sc.tl.umap(sdata, random_state=random_state)
