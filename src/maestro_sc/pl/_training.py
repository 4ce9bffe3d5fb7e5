"""Training curves of a MAESTRO model (``MaestroModel.history``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._utils import finish, new_axes_row

#: Columns of the history that are losses, in the order drawn (others containing "loss" follow).
LOSS_COLUMNS = ("loss", "rec", "sd", "con")
#: Diagnostics of learning drawn in the second and third panels.
DIAGNOSTIC_COLUMNS = (
    "teacher_entropy_frac",
    "kl",
    "z_std",
    "proto_drift",
    "con_acc",
    "rec_floor",
)


def _curve(
    steps: np.ndarray, history: pd.DataFrame, column: str, window: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, raw, smoothed)`` of a history column over its finite values (running mean)."""
    values = history[column].to_numpy(dtype=float)
    ok = np.isfinite(values)
    raw = values[ok]
    smoothed = raw
    if window and window > 1:
        smoothed = pd.Series(raw).rolling(window, min_periods=1).mean().to_numpy()
    return steps[ok], raw, smoothed


def training_history(
    history: pd.DataFrame,
    *,
    x: str = "step",
    losses: Sequence[str] | None = None,
    smooth: int | None = None,
    logy: bool = False,
    title: str | None = None,
    ax: Any = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Any:
    """Losses over training steps and the diagnostics of learning, in three panels.

    Left: the total loss and its parts (``loss``, ``rec``, ``sd``, ``con`` and any column
    containing "loss"), with the reconstruction floor ``rec_floor`` (the Sinkhorn loss between
    two disjoint subsets of one sample: what a perfect reconstruction would still pay).
    Middle: the teacher's entropy as a fraction of its maximum ``log K`` (1.0 is a uniform,
    uninformative distillation target) and the distillation KL (near 0: the term carries no
    signal). Right: ``z_std`` (the per-dimension spread of the embeddings; near zero means
    collapse), the prototype drift from the start of training (standardised marker units) and
    the accuracy of the sample-contrastive task when it is on. Older histories without these
    columns draw what they have.

    Parameters
    ----------
    history
        The training history (``MaestroModel.history``): one row per logged step.
    x
        Column for the x axis (default ``"step"``; the row number when absent).
    losses
        Loss columns to draw (default: those found among ``loss``, ``rec``, ``sd`` and any
        other column containing "loss").
    smooth
        Window of a running mean over steps (raw values are drawn faintly behind).
    logy
        Log scale for the losses.
    title
        Figure title.
    ax
        A sequence of three Axes to draw in (default: a new figure).
    show
        Show the figure (default: only in a Jupyter notebook); when shown, returns ``None``.
    save
        Path of an image file to write.

    Returns
    -------
    List of the three Axes (unless shown).

    Examples
    --------
    >>> import maestro_sc as mst
    >>> model = mst.tl.pretrain(adata, sample_key="sample")  # doctest: +SKIP
    >>> mst.pl.training_history(model.history, smooth=20)  # doctest: +SKIP
    """
    if not isinstance(history, pd.DataFrame):
        raise TypeError(
            f"`history` must be a DataFrame (MaestroModel.history), got {type(history).__name__}."
        )
    if history.empty:
        raise ValueError("The training history is empty; train the model first.")
    steps = history[x].to_numpy() if x in history.columns else np.arange(len(history))
    xlabel = x if x in history.columns else "logged step"
    if losses is None:
        losses = [c for c in LOSS_COLUMNS if c in history.columns]
        losses += [c for c in history.columns if "loss" in str(c) and c not in losses]
    else:
        losses = [losses] if isinstance(losses, str) else list(losses)
        missing = [c for c in losses if c not in history.columns]
        if missing:
            raise KeyError(
                f"Columns {missing} are not in the history; it has {list(history.columns)}."
            )
    if not losses:
        raise ValueError(
            f"No loss column in the history ({list(history.columns)}); pass `losses=`."
        )
    ax_loss, ax_sd, ax_rep = new_axes_row(ax, 3, (14, 3.6))
    for column in losses:
        xs, raw, smoothed = _curve(steps, history, column, smooth)
        if len(xs) == 0:
            continue
        line = ax_loss.plot(xs, smoothed, label=column, linewidth=1.2)[0]
        if smooth and smooth > 1:
            ax_loss.plot(xs, raw, color=line.get_color(), alpha=0.25, linewidth=0.6)
    if "rec_floor" in history.columns:
        xs, _, smoothed = _curve(steps, history, "rec_floor", None)
        ax_loss.plot(xs, smoothed, color="0.3", linestyle=":", linewidth=1.2,
                     label="rec floor (same sample)")  # fmt: skip
    if logy:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel(xlabel)
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("losses", fontsize=10)
    ax_loss.legend(frameon=False, fontsize=8, loc="best")

    _two_axes(
        ax_sd,
        steps,
        history,
        smooth,
        left=("teacher_entropy_frac", "teacher entropy / log K", "tab:green"),
        right=("kl", "distillation KL (nats)", "tab:red"),
        fallback_left=("teacher_entropy", "teacher entropy (nats)", "tab:green"),
    )
    if "teacher_entropy_frac" in history.columns:
        ax_sd.set_ylim(0, 1.02)
        ax_sd.axhline(1.0, color="0.6", linewidth=0.8, linestyle=":")
    ax_sd.set_xlabel(xlabel)
    ax_sd.set_title("distillation (1.0 = uniform teacher)", fontsize=10)

    _two_axes(
        ax_rep,
        steps,
        history,
        smooth,
        left=("z_std", "z_std (per-dimension std of z)", "tab:purple"),
        right=("proto_drift", "prototype drift (std. units)", "tab:brown"),
        extra=("con_acc", "contrastive accuracy", "tab:blue"),
    )
    ax_rep.set_xlabel(xlabel)
    ax_rep.set_title("representation", fontsize=10)
    for a in (ax_loss, ax_sd, ax_rep):
        a.spines[["top"]].set_visible(False)
    if title:
        ax_loss.get_figure().suptitle(title, fontsize=11)
    return finish([ax_loss, ax_sd, ax_rep], show, save)


def _two_axes(
    ax: Any,
    steps: np.ndarray,
    history: pd.DataFrame,
    smooth: int | None,
    left: tuple[str, str, str],
    right: tuple[str, str, str],
    fallback_left: tuple[str, str, str] | None = None,
    extra: tuple[str, str, str] | None = None,
) -> None:
    """Draw up to two history columns on a left and a right axis (``extra`` on the left)."""
    handles = []
    if left[0] not in history.columns and fallback_left is not None:
        left = fallback_left
    for column, label, color in (left, *([extra] if extra else [])):
        if column in history.columns:
            xs, _, smoothed = _curve(steps, history, column, smooth)
            handles += ax.plot(xs, smoothed, color=color, label=label, linewidth=1.2)
    if handles:
        ax.set_ylabel(" / ".join(h.get_label() for h in handles), fontsize=8)
        ax.set_ylim(bottom=0)
    if right[0] in history.columns:
        twin = ax.twinx()
        twin.grid(False)  # one grid per panel
        xs, _, smoothed = _curve(steps, history, right[0], smooth)
        handles += twin.plot(
            xs, smoothed, color=right[2], linestyle="--", label=right[1], linewidth=1.2
        )
        twin.set_ylabel(right[1], fontsize=8)
        twin.set_ylim(bottom=0)
    if handles:
        ax.legend(handles=handles, frameon=False, fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
                fontsize=9, color="0.4")  # fmt: skip
