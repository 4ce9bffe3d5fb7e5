"""maestro_sc: MAESTRO sample embeddings for cytometry cohorts.

Import as ``import maestro_sc as mst``. The namespaces ``io``, ``pp``, ``tl``, ``pl``, ``get``
and ``datasets`` are imported on first use, so ``import maestro_sc`` stays fast (torch, scanpy and
Lightning load only when a function needs them).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING

try:  # pyproject.toml holds the version; the installed package's metadata carries it
    __version__ = importlib.metadata.version("maestro_sc")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree not installed
    __version__ = "0+unknown"

_SUBMODULES = ("io", "pp", "tl", "pl", "get", "datasets", "model", "train")

if TYPE_CHECKING:  # pragma: no cover
    from . import datasets, get, io, model, pl, pp, tl, train  # noqa: F401


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'maestro_sc' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBMODULES])


__all__ = ["__version__", *_SUBMODULES]
