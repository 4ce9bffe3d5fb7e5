"""The one-line machine description every benchmark prints next to its numbers."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def machine(extra: str = "") -> str:
    """Platform, CPU model and logical cores, torch build, threads (and GPU), ``extra``, the
    date and the load average, joined by `` | ``."""
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", cuda {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{platform.platform()} | CPU {cpu} x {os.cpu_count()} logical | torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads{gpu} | {extra}"
        f"{time.strftime('%Y-%m-%d %H:%M')} | load avg {os.getloadavg()[0]:.1f}"
    )
