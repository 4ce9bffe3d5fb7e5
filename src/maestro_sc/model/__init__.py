"""Plain-torch MAESTRO model (no Lightning, no AnnData).

One paper concept per module: ``blocks`` (paper 3.1), ``encoder`` (eq. 8), ``decoder`` (eq. 9),
``masking`` (NRBM, 3.2.1), ``sinkhorn`` (eq. 10, C.2), ``distill`` (3.2.3), ``maestro``
(Algorithm 3), ``config`` (hyper-parameters and presets) and ``prototypes`` (prototype
pooling, not in the paper). See ``docs/model.md``.

The names below are imported on first use, so that ``maestro_sc.model.config`` (plain
dataclasses) can be read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: Where each public name is defined.
_WHERE = {
    "PRESETS": "config",
    "MaestroConfig": "config",
    "preset": "config",
    "ema_momentum_at": "distill",
    "Maestro": "maestro",
    "parameter_counts": "maestro",
    "multi_rate_masks": "masking",
    "nrbm_mask": "masking",
    "PrototypePool": "prototypes",
    "sinkhorn_cost": "sinkhorn",
}

_SUBMODULES = (
    "blocks",
    "config",
    "decoder",
    "distill",
    "encoder",
    "maestro",
    "masking",
    "prototypes",
    "sinkhorn",
)

if TYPE_CHECKING:  # pragma: no cover
    from .config import PRESETS, MaestroConfig, preset
    from .distill import ema_momentum_at
    from .maestro import Maestro, parameter_counts
    from .masking import multi_rate_masks, nrbm_mask
    from .prototypes import PrototypePool
    from .sinkhorn import sinkhorn_cost


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'maestro_sc.model' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_WHERE, *_SUBMODULES})


__all__ = [
    "PRESETS",
    "Maestro",
    "MaestroConfig",
    "PrototypePool",
    "ema_momentum_at",
    "multi_rate_masks",
    "nrbm_mask",
    "parameter_counts",
    "preset",
    "sinkhorn_cost",
]
