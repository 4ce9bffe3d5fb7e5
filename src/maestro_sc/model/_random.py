"""Random numbers drawn on a generator's device and moved to the device that needs them.

A ``torch.Generator`` lives on one device; these helpers let a CPU generator seed draws used on
a GPU (and the reverse), so that one seed gives the same numbers wherever the model runs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform ``[0, 1)`` numbers drawn on the generator's device, moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Standard normal numbers drawn on the generator's device, moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)
