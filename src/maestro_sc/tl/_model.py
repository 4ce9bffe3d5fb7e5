"""``MaestroModel``: a trained MAESTRO network with its config, markers and history."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from .._results import h5ad_safe as h5ad_safe  # re-exported for _embed
from .._utils import check_count, check_var_names, resolve_cells

#: Bumped whenever the saved layout changes incompatibly.
FORMAT_VERSION = 1
_WEIGHTS = "model.safetensors"
_META = "maestro.json"
_HISTORY = "history.csv"


def match_panel(adata: Any, model_markers: Sequence[str], *, mod: str | None = None) -> list[str]:
    """The model's markers, checked against the data's ``var_names`` (used by name, any order).

    Extra markers in the data are ignored with a warning naming them; missing ones are an error
    naming the missing and the extra markers.
    """
    adata, _ = resolve_cells(adata, mod)
    check_var_names(adata)
    data_markers = [str(v) for v in adata.var_names]
    missing = [m for m in model_markers if m not in data_markers]
    extra = [m for m in data_markers if m not in model_markers]
    if missing:
        raise KeyError(
            f"Panel mismatch: the data lack the model's markers {missing} "
            f"(the data's extra markers are {extra}). Embed data stained with the model's panel, "
            "rename var_names to the model's marker names, or train a model on this panel."
        )
    if extra:
        warnings.warn(
            f"Markers not used by the model are ignored: {extra}.", UserWarning, stacklevel=3
        )
    return list(model_markers)


def check_which(which: str | None) -> None:
    """Raise unless ``which`` names an encoder (or is None for the model's default)."""
    if which is not None and which not in ("teacher", "student"):
        raise ValueError(f"`which` must be 'teacher' or 'student', got {which!r}.")


class MaestroModel:
    """A MAESTRO model trained on a cytometry cohort.

    Create one with :func:`maestro_sc.tl.pretrain` or :meth:`MaestroModel.load`; embed samples
    with :meth:`embed` or :func:`maestro_sc.tl.embed_samples`.

    Attributes
    ----------
    config
        The :class:`~maestro_sc.model.config.MaestroConfig` (every hyper-parameter).
    markers
        Marker names in the order the network reads them.
    history
        One row per training step: losses, per-dimension z spread, learning rate.
    summary
        Training summary: preset, seed, steps, epochs, wall time, whether interrupted.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=12, random_state=0)
    >>> model = mst.tl.pretrain(
    ...     adata, "sample", preset="cpu", max_epochs=1, min_steps=2, progress=False
    ... )  # two training steps, for a quick example
    >>> z = model.embed(adata, "sample", progress=False)
    >>> z.shape[0]
    12
    """

    def __init__(
        self,
        net: Any,
        markers: Sequence[str],
        history: pd.DataFrame | None = None,
        summary: dict | None = None,
    ) -> None:
        self.net = net
        self.markers = [str(m) for m in markers]
        self.history = history if history is not None else pd.DataFrame()
        self.summary = dict(summary or {})

    @property
    def config(self):
        return self.net.config

    def __repr__(self) -> str:
        cfg = self.config
        steps = self.summary.get("steps", 0)
        return (
            f"MaestroModel(preset={self.summary.get('preset')!r}, markers={len(self.markers)}, "
            f"latent_dim={cfg.latent_dim}, n_inducing={cfg.n_inducing}, "
            f"n_prototypes={cfg.n_prototypes}, embedding_dim={cfg.embedding_dim}, "
            f"trained_steps={steps})"
        )

    def embed(
        self,
        adata: Any,
        sample_key: str,
        *,
        layer: str | None = None,
        mod: str | None = None,
        which: str | None = None,
        chunk_size: int | None = None,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Embed every sample of ``adata`` on all of its cells.

        Parameters
        ----------
        adata
            AnnData of cells (in memory or backed), or a MuData with ``mod=``. Its
            ``var_names`` must include every model marker (extras are ignored, with a warning).
        sample_key
            Column of ``obs`` with the sample id of each cell.
        layer
            Read values from ``adata.layers[layer]``.
        mod
            Modality of a MuData.
        which
            ``"teacher"`` or ``"student"`` encoder (default: ``config.embed_with``).
        chunk_size
            Cells per streamed chunk (default: ``config.chunk_size``).
        progress
            Show a progress bar over samples.

        Returns
        -------
        DataFrame, one row per sample (order of first appearance), one column per dimension.

        Examples
        --------
        >>> import maestro_sc as mst
        >>> adata = mst.datasets.synthetic_cohort(n_samples=12, random_state=0)
        >>> model = mst.tl.pretrain(adata, "sample", max_epochs=0, progress=False)  # untrained
        >>> model.embed(adata, "sample", progress=False).shape[0]
        12
        """
        from .._data import SampleIndex

        markers = match_panel(adata, self.markers, mod=mod)
        index = SampleIndex(adata, sample_key, markers=markers, layer=layer, mod=mod)
        return self.embed_index(index, which=which, chunk_size=chunk_size, progress=progress)

    def embed_index(self, index, *, which=None, chunk_size=None, progress=True) -> pd.DataFrame:
        """Embed every sample of a :class:`~maestro_sc._data.SampleIndex` (see :meth:`embed`)."""
        import torch
        from tqdm import tqdm

        check_which(which)
        check_count(chunk_size, "chunk_size", none=True)
        which = which or self.config.embed_with
        device = next(self.net.parameters()).device
        self.net.eval()
        rows = []
        with torch.no_grad():
            for _, cells in tqdm(
                index.iter_samples(), total=index.n_samples, disable=not progress, desc="embedding"
            ):
                x = torch.from_numpy(cells).to(device)
                z = self.net.encode(x, which=which, chunk_size=chunk_size)
                rows.append(z.float().cpu().numpy())
        z = np.stack(rows)
        bad = [index.sample_ids[i] for i in np.flatnonzero(~np.isfinite(z).all(axis=1))]
        if bad:
            # Values far outside the training cells' range overflow the attention; a NaN
            # embedding would otherwise pass silently into neighbours and probes.
            raise ValueError(
                f"The embedding of {len(bad)} samples is not finite: {bad[:10]}. Their values "
                "lie far outside the range of the cells the model was trained on; transform "
                "them as the training data were (e.g. mst.pp.arcsinh with the same cofactor)."
            )
        return pd.DataFrame(z, index=pd.Index(index.sample_ids, name="sample"))

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save to a folder: weights (safetensors), ``maestro.json`` (config, markers, version).

        Loading never runs pickled code. Returns the folder path.

        Examples
        --------
        >>> model.save("my_model", overwrite=True)  # doctest: +SKIP
        >>> model = mst.tl.MaestroModel.load("my_model")  # doctest: +SKIP
        """
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True.")
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.net.state_dict().items()}
        save_file(state, str(path / _WEIGHTS))
        meta = {
            "format": "maestro_sc",
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "config": self.config.to_dict(),
            "markers": self.markers,
            "summary": self.summary,
        }
        (path / _META).write_text(json.dumps(meta, indent=2, default=str))
        self.history.to_csv(path / _HISTORY, index=False)
        return path

    @classmethod
    def load(cls, path: str | Path, *, map_location: str = "cpu") -> MaestroModel:
        """Load a model saved by :meth:`save`.

        Raises a ``ValueError`` for a folder that is not a saved model, a corrupted file, or a
        format version this package cannot read.

        Examples
        --------
        >>> model = mst.tl.MaestroModel.load("my_model")  # doctest: +SKIP
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from ..model.config import MaestroConfig
        from ..model.maestro import Maestro

        path = Path(path)
        meta_file, weights_file = path / _META, path / _WEIGHTS
        if not path.is_dir() or not meta_file.exists() or not weights_file.exists():
            raise ValueError(
                f"{path} is not a saved maestro_sc model: expected a folder with {_META} and "
                f"{_WEIGHTS}, as written by MaestroModel.save."
            )
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{meta_file} is corrupted or not a maestro_sc file: {err}.") from err
        if not isinstance(meta, dict) or meta.get("format") != "maestro_sc":
            raise ValueError(f"{meta_file} was not written by maestro_sc (no 'format' marker).")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path} has model format version {version}, but maestro_sc {__version__} reads "
                f"version {FORMAT_VERSION}. Load it with the maestro_sc version that saved it "
                f"({meta.get('package_version')}) or retrain."
            )
        try:
            state = load_file(str(weights_file), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{weights_file} is truncated or corrupted: {err}.") from err
        config = MaestroConfig.from_dict(meta["config"])
        net = Maestro(config)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{weights_file} does not match its config: {err}.") from err
        net.to(map_location)
        history_file = path / _HISTORY
        history = (
            pd.read_csv(history_file)
            if history_file.exists() and history_file.stat().st_size > 1
            else pd.DataFrame()
        )
        return cls(net, meta["markers"], history=history, summary=meta.get("summary", {}))
