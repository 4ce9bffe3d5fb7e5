"""Plain-torch MAESTRO model (no Lightning, no AnnData).

One paper concept per module: ``blocks`` (paper 3.1), ``encoder`` (eq. 8), ``decoder`` (eq. 9),
``masking`` (NRBM, 3.2.1), ``sinkhorn`` (eq. 10, C.2), ``distill`` (3.2.3), ``maestro``
(Algorithm 3), ``config`` (hyper-parameters and presets) and ``prototypes`` (prototype
pooling, not in the paper). See ``docs/model.md``.
"""

from .config import PRESETS, MaestroConfig, preset
from .distill import ema_momentum_at
from .maestro import Maestro, parameter_counts
from .masking import multi_rate_masks, nrbm_mask
from .prototypes import PrototypePool
from .sinkhorn import sinkhorn_cost

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
