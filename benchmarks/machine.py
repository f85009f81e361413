"""The machine line every benchmark result carries, measured rather than typed in."""

from __future__ import annotations

import os
import platform


def machine(device: str = "cpu") -> str:
    """Cores, architecture, memory and GPU; with ``device="cuda"``, the GPU the run used."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = f"{os.cpu_count()}-core {platform.machine()} CPU, {memory:.0f} GiB"
    try:
        import torch
    except ImportError:  # a benchmark without torch in its environment: no GPU can be used either
        return f"{cpu}, GPU not checked"
    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} ({cpu})"
    return f"{cpu}, {'GPU present but unused' if torch.cuda.is_available() else 'no GPU'}"
