"""Cell-level plots: masked reconstruction (paper Fig. 2) and per-cell attribution scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._utils import get_matrix, logger, marker_positions, resolve_cells
from ._utils import finish, new_axes

#: Colours of the reconstruction panels (the paper's yellow / red / blue).
UNMASKED_COLOR = "#E0A100"
MASKED_COLOR = "#D62728"
RECON_COLOR = "#1F5FBF"


def pca_2d(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre and the first two principal axes of ``X``; returns ``(coords, mean, axes)``."""
    mean = X.mean(axis=0)
    centred = X - mean
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    if axes.shape[0] < 2:
        axes = np.vstack([axes, np.zeros((2 - axes.shape[0], X.shape[1]))])
    return centred @ axes.T, mean, axes


def _point_size(n: int, scale: float = 3000.0) -> float:
    return float(np.clip(scale / max(n, 1), 0.5, 16.0))


def reconstruction(
    cells: np.ndarray,
    mask: np.ndarray,
    recon: np.ndarray,
    *,
    markers: Sequence[str] | None = None,
    basis: Literal["pca", "umap"] = "pca",
    random_state: int = 0,
    title: str | None = None,
    ax: Any = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Any:
    """One sample's unmasked, masked and reconstructed cells on a shared 2-D map (paper Fig. 2).

    The map is fitted on the union of the sample's cells and the reconstruction (PCA, or UMAP
    with ``basis="umap"``), so the panels share coordinates: all three overlaid, then the
    unmasked input cells (yellow), the masked cells (red) and the reconstruction (blue), each
    over the sample's cells in light grey. With ``markers``, a panel below compares the
    per-marker mean ± std of the unmasked, masked and all cells with the reconstruction
    (a reconstruction that shrinks toward the mean shows there).

    Parameters
    ----------
    cells
        ``(n, d)`` the sample's cells as the model saw them (standardised markers).
    mask
        Boolean ``(n,)``, ``True`` for masked cells (or the integer positions of masked cells).
    recon
        ``(m, d)`` reconstructed cells.
    markers
        Names of the ``d`` columns; adds the per-marker panel.
    basis
        ``"pca"`` or ``"umap"`` (needs ``umap-learn``).
    random_state
        Seed of UMAP.
    title
        Figure title.
    ax
        A sequence of 4 Axes (5 with ``markers``) to draw in (default: a new figure).
    show
        Show the figure (default: only in a Jupyter notebook); when shown, returns ``None``.
    save
        Path of an image file to write.

    Returns
    -------
    List of the Axes (unless shown).

    Examples
    --------
    >>> import numpy as np
    >>> import maestro_sc as mst
    >>> rng = np.random.default_rng(0)
    >>> cells = rng.normal(size=(500, 5))
    >>> mask = cells[:, 0] > 0.5
    >>> recon = cells + rng.normal(scale=0.2, size=cells.shape)
    >>> axes = mst.pl.reconstruction(cells, mask, recon, show=False)
    """
    import matplotlib.pyplot as plt

    cells = np.asarray(cells, dtype=np.float64)
    recon = np.asarray(recon, dtype=np.float64)
    if cells.ndim != 2 or recon.ndim != 2:
        raise ValueError(
            f"`cells` and `recon` must be 2-D (cells × markers), got {cells.shape} and "
            f"{recon.shape}."
        )
    if cells.shape[1] != recon.shape[1]:
        raise ValueError(
            f"`cells` has {cells.shape[1]} markers but `recon` has {recon.shape[1]}; they must "
            "be the same markers in the same order."
        )
    mask = np.asarray(mask)
    if mask.dtype != bool:
        positions = mask.astype(np.int64)
        mask = np.zeros(len(cells), dtype=bool)
        mask[positions] = True
    if mask.shape != (len(cells),):
        raise ValueError(f"`mask` must have one value per cell ({len(cells)}), got {mask.shape}.")
    if markers is not None and len(markers) != cells.shape[1]:
        raise ValueError(
            f"`markers` names {len(markers)} columns but the cells have {cells.shape[1]}."
        )
    n_panels = 5 if markers is not None else 4

    union = np.vstack([cells, recon])
    if basis == "pca":
        coords, _, _ = pca_2d(union)
        xlabel, ylabel = "PC1", "PC2"
    elif basis == "umap":
        import umap

        coords = umap.UMAP(random_state=random_state).fit_transform(union)
        xlabel, ylabel = "UMAP1", "UMAP2"
    else:
        raise ValueError(f"`basis` must be 'pca' or 'umap', got {basis!r}.")
    xy_cells, xy_recon = coords[: len(cells)], coords[len(cells) :]

    if ax is None:
        if markers is None:
            fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), layout="constrained")
            axes = list(axes)
        else:
            fig = plt.figure(figsize=(13, 6.6), layout="constrained")
            grid = fig.add_gridspec(2, 4, height_ratios=[1, 0.8])
            axes = [fig.add_subplot(grid[0, i]) for i in range(4)]
            axes.append(fig.add_subplot(grid[1, :]))
    else:
        axes = list(ax.ravel()) if hasattr(ax, "ravel") else list(ax)
        if len(axes) != n_panels:
            raise ValueError(f"This plot draws {n_panels} panels; pass `ax=` as {n_panels} Axes.")
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    pad = 0.05 * (hi - lo + 1e-9)
    parts = [
        ("unmasked input", xy_cells[~mask], UNMASKED_COLOR),
        ("masked (original)", xy_cells[mask], MASKED_COLOR),
        ("reconstruction", xy_recon, RECON_COLOR),
    ]
    size = _point_size(len(union))
    for name, xy, color in parts:
        axes[0].scatter(*xy.T, s=size, color=color, alpha=0.5, linewidths=0, label=name)
    axes[0].set_title("overlay", fontsize=10)
    axes[0].legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=1,
        frameon=False,
        fontsize=8,
        markerscale=max(1.0, 6 / size),
    )
    for panel, (name, xy, color) in zip(axes[1:4], parts):
        panel.scatter(*xy_cells.T, s=size, color="0.85", linewidths=0)
        panel.scatter(*xy.T, s=size, color=color, alpha=0.7, linewidths=0)
        panel.set_title(f"{name} (n={len(xy)})", fontsize=10)
    for panel in axes[:4]:
        panel.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        panel.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        panel.set_xlabel(xlabel, fontsize=9)
        panel.set_xticks([])
        panel.set_yticks([])
    axes[0].set_ylabel(ylabel, fontsize=9)
    if markers is not None:
        _marker_summary(axes[4], cells, mask, recon, markers)
    if title:
        axes[0].get_figure().suptitle(title, fontsize=11)
    return finish(axes, show, save)


def _marker_summary(
    ax: Any, cells: np.ndarray, mask: np.ndarray, recon: np.ndarray, markers: Sequence[str]
) -> None:
    """Per-marker mean ± std of the unmasked, masked, all and reconstructed cells, side by side.

    The reconstruction is matched to the whole subset, so "all cells" is its target.
    """
    x = np.arange(len(markers), dtype=float)
    parts = [
        ("unmasked input", cells[~mask], UNMASKED_COLOR, -0.27),
        ("masked (original)", cells[mask], MASKED_COLOR, -0.09),
        ("all cells (target)", cells, "0.45", 0.09),
        ("reconstruction", recon, RECON_COLOR, 0.27),
    ]
    for name, values, color, offset in parts:
        if len(values) == 0:
            continue
        ax.errorbar(
            x + offset,
            values.mean(axis=0),
            yerr=values.std(axis=0),
            fmt="o",
            markersize=3,
            capsize=2,
            color=color,
            label=name,
            elinewidth=1,
        )
    ax.set_xticks(x, [str(m) for m in markers], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(markers) - 0.4)
    ax.set_ylabel("value (mean ± std)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)


def _cell_coords(
    adata: Any,
    rows: np.ndarray,
    basis: str | None,
    markers: Sequence[str] | None,
    layer: str | None,
) -> tuple[np.ndarray, str]:
    """2-D coordinates of the cells at sorted ``rows``.

    ``obsm[basis]`` (or ``X_<basis>``), else the first two principal components of those cells'
    marker values.
    """
    if basis is not None:
        for key in (basis, f"X_{basis}"):
            if key in adata.obsm:
                coords = np.asarray(adata.obsm[key])
                if coords.ndim != 2 or coords.shape[1] < 2:
                    raise ValueError(f"obsm[{key!r}] must have at least 2 columns.")
                return coords[rows, :2], key.removeprefix("X_").upper()
        logger.info("obsm has no %r; showing the cells' first two principal components.", basis)
    cols = marker_positions(adata, markers)
    values = get_matrix(adata, layer)[rows]
    if hasattr(values, "toarray"):
        values = values.toarray()
    coords, _, _ = pca_2d(np.asarray(values, dtype=np.float64)[:, cols])
    return coords, "PC"


def cell_attribution(
    adata: Any,
    score_key: str = "maestro_attribution",
    *,
    basis: str | None = "umap",
    sample_key: str | None = None,
    samples: Sequence[str] | None = None,
    max_cells: int | None = 50_000,
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    mod: str | None = None,
    cmap: str | None = None,
    random_state: int = 0,
    title: str | None = None,
    ax: Any = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Any:
    """Cells on a 2-D map coloured by their attribution score (``mst.tl.cell_attribution``).

    The map is ``obsm[basis]`` (``"umap"`` finds ``X_umap``), or, when it is absent or
    ``basis=None``, the first two principal components of the cells' marker values. Signed
    scores (the ``"composition"`` score: enriched > 0, depleted < 0) get a diverging colour map
    centred at 0 and the cells with the largest ``|score|`` on top; non-negative scores a
    sequential map with the highest on top.

    Parameters
    ----------
    adata
        AnnData of cells with ``obs[score_key]`` (or a MuData with ``mod=``).
    score_key
        Column of ``obs`` with the per-cell score.
    basis
        Key of ``obsm`` with 2-D coordinates; ``None`` for PCA of the markers.
    sample_key
        Column of ``obs`` with sample ids, to restrict the plot to ``samples``.
    samples
        Samples to show (default: all).
    max_cells
        Draw at most this many cells, chosen at random (``None``: all).
    markers, layer
        Markers and layer for the PCA fallback.
    mod
        Modality of a MuData.
    cmap
        Colour map of the score (default: ``"RdBu_r"`` for signed scores, else ``"viridis"``).
    random_state
        Seed of the cell subsample.
    title
        Axes title (default: ``score_key``).
    ax
        Axes to draw in (default: a new figure).
    show
        Show the figure (default: only in a Jupyter notebook); when shown, returns ``None``.
    save
        Path of an image file to write.

    Returns
    -------
    The Axes (unless shown).

    Examples
    --------
    >>> import maestro_sc as mst
    >>> mst.tl.cell_attribution(adata, model, sample_key="sample")  # doctest: +SKIP
    >>> mst.pl.cell_attribution(adata, sample_key="sample", samples=["s1"])  # doctest: +SKIP
    """
    adata, _ = resolve_cells(adata, mod)
    if score_key not in adata.obs.columns:
        raise KeyError(
            f"obs has no {score_key!r} column. Compute it with mst.tl.cell_attribution, or pass "
            f"`score_key=` among {list(adata.obs.columns)}."
        )
    keep = np.ones(adata.n_obs, dtype=bool)
    if samples is not None:
        if sample_key is None or sample_key not in adata.obs.columns:
            raise KeyError(
                f"To select `samples`, pass `sample_key=` naming the sample column of obs "
                f"({list(adata.obs.columns)})."
            )
        wanted = [str(s) for s in ([samples] if isinstance(samples, str) else samples)]
        ids = adata.obs[sample_key].astype(str).to_numpy()
        unknown = sorted(set(wanted) - set(ids))
        if unknown:
            raise KeyError(f"Samples {unknown[:10]} are not in obs[{sample_key!r}].")
        keep = np.isin(ids, wanted)
    score = adata.obs[score_key].to_numpy(dtype=np.float64)
    rows = np.where(keep & np.isfinite(score))[0]
    if len(rows) == 0:
        raise ValueError(f"No cell with a finite {score_key!r} value to plot.")
    if max_cells is not None and len(rows) > max_cells:
        rows = np.sort(np.random.default_rng(random_state).choice(rows, max_cells, replace=False))
    coords, label = _cell_coords(adata, rows, basis, markers, layer)
    values = score[rows]
    signed = bool((values < 0).any() and (values > 0).any())
    # The strongest scores last, so they are drawn on top.
    order = np.argsort(np.abs(values) if signed else values, kind="stable")
    limits = {}
    if signed:
        bound = float(np.quantile(np.abs(values), 0.995)) or float(np.abs(values).max())
        limits = dict(vmin=-bound, vmax=bound)
    ax = new_axes(ax, (4.8, 4.0))
    points = ax.scatter(
        coords[order, 0],
        coords[order, 1],
        c=values[order],
        s=_point_size(len(rows), 12_000.0),
        cmap=cmap or ("RdBu_r" if signed else "viridis"),
        linewidths=0,
        **limits,
    )
    ax.figure.colorbar(points, ax=ax, fraction=0.046, pad=0.04, label=score_key)
    ax.set_xlabel(f"{label}1")
    ax.set_ylabel(f"{label}2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else f"{score_key} ({len(rows)} cells)", fontsize=10)
    return finish(ax, show, save)
