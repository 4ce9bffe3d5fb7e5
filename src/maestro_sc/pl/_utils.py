"""Shared plumbing of the plots: new axes, ``show``/``save`` handling, colours per method."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd


def in_notebook() -> bool:
    """Whether the code runs in a Jupyter kernel (where figures are shown by default)."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def new_axes(ax: Any, figsize: tuple[float, float]) -> Any:
    """``ax`` itself, or the axes of a new figure of ``figsize`` inches."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def new_axes_row(ax: Any, n: int, figsize: tuple[float, float], **subplot_kw: Any) -> list[Any]:
    """``n`` axes: those given in ``ax`` (a sequence of ``n``) or a new row of subplots."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, axes = plt.subplots(1, n, figsize=figsize, layout="constrained", **subplot_kw)
        return list(axes.ravel()) if n > 1 else [axes]
    if hasattr(ax, "ravel"):
        axes = list(ax.ravel())
    elif isinstance(ax, Sequence):
        axes = list(ax)
    else:
        axes = [ax]
    if len(axes) != n:
        raise ValueError(f"This plot draws {n} panels; pass `ax=` as a sequence of {n} Axes.")
    return axes


def finish(axes: Any, show: bool | None, save: str | Path | None) -> Any:
    """Save and/or show the figure; return ``axes`` unless shown (as scanpy does)."""
    import matplotlib.pyplot as plt

    first = axes[0] if isinstance(axes, list) else axes
    fig = first.get_figure()
    if save is not None:
        path = Path(save)
        if path.parent and not path.parent.exists():
            raise FileNotFoundError(f"Folder {path.parent} does not exist; create it first.")
        fig.savefig(path, dpi=150, bbox_inches="tight")
    if show is None:
        show = in_notebook()
    if show:
        plt.show()
        return None
    return axes


def method_colors(names: Sequence[str], palette: Mapping[str, Any] | None = None) -> dict:
    """A colour per method: ``palette`` where it names one, else tab10/tab20 in order."""
    import matplotlib as mpl

    cmap = mpl.colormaps["tab10" if len(names) <= 10 else "tab20"]
    colors = {name: cmap(i % cmap.N) for i, name in enumerate(names)}
    colors.update({k: v for k, v in (palette or {}).items() if k in colors})
    return colors


def results_by_method(results: Any, what: str) -> dict[str, pd.DataFrame]:
    """``{method: table}`` from a dict of tables or one table with a ``method`` column."""
    if isinstance(results, pd.DataFrame):
        if "method" not in results.columns:
            return {"": results}
        return {
            str(m): part.drop(columns="method")
            for m, part in results.groupby("method", sort=False, observed=True)
        }
    if isinstance(results, Mapping):
        bad = [k for k, v in results.items() if not isinstance(v, pd.DataFrame)]
        if bad:
            raise TypeError(f"{what} results for {bad} are not DataFrames.")
        if not results:
            raise ValueError(f"No {what} results to plot.")
        return {str(k): v for k, v in results.items()}
    raise TypeError(
        f"Expected {what} results as a dict {{method: DataFrame}} or a DataFrame with a "
        f"'method' column, got {type(results).__name__}."
    )
