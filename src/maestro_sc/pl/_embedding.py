"""Sample embedding plot: scanpy's ``pl.embedding`` on the sample-level AnnData."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._utils import finish


def embedding(
    sdata: Any,
    color: str | Sequence[str] | None = None,
    *,
    basis: str = "umap",
    title: str | Sequence[str] | None = None,
    ax: Any = None,
    show: bool | None = None,
    save: str | Path | None = None,
    **kwargs: Any,
) -> Any:
    """Samples on a 2-D embedding coloured by ``obs`` columns (paper Fig. 3a).

    A thin wrapper of :func:`scanpy.pl.embedding` that returns the Axes and saves to a path.
    ``basis`` is any ``obsm`` key (``"umap"`` finds ``X_umap``); with an embedding of more
    than two dimensions the first two are drawn.

    Parameters
    ----------
    sdata
        Sample-level AnnData.
    color
        ``obs`` column(s) (or ``var_names``) to colour by; several make several panels.
    basis
        ``obsm`` key of the coordinates. For a UMAP of the MAESTRO embedding, run
        ``sc.pp.neighbors(sdata, use_rep="X_maestro"); sc.tl.umap(sdata)`` first (or
        ``mst.tl.embed_samples(..., umap=True)``).
    title
        Panel title(s).
    ax
        Axes to draw in (one colour only).
    show
        Show the figure (default: only in a Jupyter notebook); when shown, returns ``None``.
    save
        Path of an image file to write.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (``size``, ``palette``, ``legend_loc`` …).

    Returns
    -------
    The Axes, or a list of Axes for several colours (unless shown).

    Examples
    --------
    >>> import scanpy as sc
    >>> import maestro_sc as mst
    >>> sc.pp.neighbors(sdata, use_rep="X_maestro", n_neighbors=10)  # doctest: +SKIP
    >>> sc.tl.umap(sdata)  # doctest: +SKIP
    >>> mst.pl.embedding(sdata, "diagnosis")  # doctest: +SKIP
    """
    import scanpy as sc

    key = basis if basis in sdata.obsm else f"X_{basis}"
    if key not in sdata.obsm:
        hint = (
            " Compute it with sc.pp.neighbors(sdata, use_rep='X_maestro'); sc.tl.umap(sdata)."
            if basis in ("umap", "X_umap")
            else ""
        )
        raise KeyError(
            f"No embedding {basis!r} in sdata.obsm (keys: {list(sdata.obsm.keys())}).{hint}"
        )
    colors = [color] if color is None or isinstance(color, str) else list(color)
    if ax is not None and len(colors) > 1:
        raise ValueError("`ax=` takes one panel; pass a single `color` or leave `ax` out.")
    if "components" not in kwargs and sdata.obsm[key].shape[1] > 2:
        kwargs["components"] = "1,2"
    # scanpy sizes points for thousands of cells (120,000 / n); a cohort has tens to hundreds.
    kwargs.setdefault("size", float(min(200.0, 120_000 / max(sdata.n_obs, 1))))
    if len(colors) > 1:
        kwargs.setdefault("wspace", 0.6)
    axes = sc.pl.embedding(
        sdata,
        basis=basis,
        color=color,
        title=title,
        ax=ax,
        show=False,
        **kwargs,
    )
    if isinstance(axes, list) and len(axes) == 1:
        axes = axes[0]
    return finish(axes, show, save)
