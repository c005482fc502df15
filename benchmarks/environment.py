"""What every benchmark table is headed by: the machine and how busy it was."""

from __future__ import annotations

import os
import platform

import torch


def machine() -> str:
    """CPU model, logical cores and the torch (and torchvision, if installed) version."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass  # not Linux: platform's answer stands
    versions = f"torch {torch.__version__}"
    try:
        import torchvision

        versions += f", torchvision {torchvision.__version__}"
    except ImportError:
        pass
    return f"{model} ({os.cpu_count()} logical cores), {versions}"


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, or ``unknown``."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"
