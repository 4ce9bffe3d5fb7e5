"""The one-line machine description every benchmark prints next to its numbers."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def machine(extra: str = "") -> str:
    """Platform, CPU model and vector units, logical cores, torch build, threads (and GPU),
    ``extra``, the date and the load average, joined by `` | ``."""
    import torch

    cpu, named = platform.processor() or "?", False
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not named:
                cpu, named = line.split(":", 1)[1].strip(), True
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    # a VM of the same name may run on hosts with different vector units from one day to the
    # next, and the step's matrix products are bound by them: name what this one has
    cpu += f" ({vector_units(flags)})"
    gpu = f", cuda {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{platform.platform()} | CPU {cpu} x {os.cpu_count()} logical | torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads{gpu} | {extra}"
        f"{time.strftime('%Y-%m-%d %H:%M')} | load avg {os.getloadavg()[0]:.1f}"
    )


def vector_units(flags: set[str]) -> str:
    """torch's CPU kernel level and the AVX-512 / AMX extensions among ``flags`` (cpuinfo).

    Without ``flags`` (no ``/proc/cpuinfo``, e.g. macOS) only the kernel level.
    """
    import torch

    level = f"torch kernels {torch.backends.cpu.get_cpu_capability()}"
    if not flags:
        return level
    shown = ", ".join(sorted(flags & {"avx512f", "avx512_bf16", "amx_bf16"}))
    return f"{level}; {shown or 'no AVX-512'}"
