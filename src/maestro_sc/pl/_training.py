"""Training curves of a MAESTRO model (``MaestroModel.history``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._utils import finish, new_axes_row

#: Columns of the history that are losses, in the order drawn (others containing "loss" follow).
LOSS_COLUMNS = ("loss", "rec", "sd")
#: Collapse diagnostics: per-dimension spread of z (left axis) and teacher entropy (right axis).
DIAGNOSTIC_COLUMNS = ("z_std", "teacher_entropy")


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
    """Losses over training steps, and the collapse diagnostics, in two panels.

    Left: the total loss and its parts (``loss``, ``rec``, ``sd`` and any column containing
    "loss"). Right: ``z_std`` (the per-dimension spread of the embeddings; near zero means
    collapse) and, on a second axis, ``teacher_entropy`` (near zero or at its maximum means
    a collapsed distillation target).

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
        A sequence of two Axes to draw in (default: a new figure).
    show
        Show the figure (default: only in a Jupyter notebook); when shown, returns ``None``.
    save
        Path of an image file to write.

    Returns
    -------
    List of the two Axes (unless shown).

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
    ax_loss, ax_diag = new_axes_row(ax, 2, (10, 3.4))
    for column in losses:
        xs, raw, smoothed = _curve(steps, history, column, smooth)
        if len(xs) == 0:
            continue
        line = ax_loss.plot(xs, smoothed, label=column, linewidth=1.2)[0]
        if smooth and smooth > 1:
            ax_loss.plot(xs, raw, color=line.get_color(), alpha=0.25, linewidth=0.6)
    if logy:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel(xlabel)
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("losses", fontsize=10)
    ax_loss.legend(frameon=False, fontsize=8, loc="upper right")
    ax_loss.spines[["top", "right"]].set_visible(False)

    handles = []
    if "z_std" in history.columns:
        xs, _, smoothed = _curve(steps, history, "z_std", smooth)
        handles += ax_diag.plot(xs, smoothed, color="tab:purple", label="z_std")
        ax_diag.set_ylabel("z_std (per-dimension std of z)")
        ax_diag.set_ylim(bottom=0)
    if "teacher_entropy" in history.columns:
        twin = ax_diag.twinx()
        # Two grids with different tick positions clutter the panel; keep the left one only.
        twin.grid(False)
        xs, _, smoothed = _curve(steps, history, "teacher_entropy", smooth)
        handles += twin.plot(
            xs,
            smoothed,
            color="tab:green",
            linestyle="--",
            label="teacher_entropy",
        )
        twin.set_ylabel("teacher entropy (nats)")
        twin.set_ylim(bottom=0)
    if handles:
        ax_diag.legend(handles=handles, frameon=False, fontsize=8, loc="lower right")
    else:
        ax_diag.text(
            0.5,
            0.5,
            "no z_std / teacher_entropy logged",
            ha="center",
            va="center",
            transform=ax_diag.transAxes,
            fontsize=9,
            color="0.4",
        )
    ax_diag.set_xlabel(xlabel)
    ax_diag.set_title("collapse diagnostics", fontsize=10)
    if title:
        ax_loss.get_figure().suptitle(title, fontsize=11)
    return finish([ax_loss, ax_diag], show, save)
