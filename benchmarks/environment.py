"""What every benchmark table is headed by: the machine and how busy it was."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

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


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that made a table, as a reader would type it: ``python benchmarks/SCRIPT ARGS``."""
    import sys

    return " ".join(["python", f"benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])


def emit(lines: list[str], out: Any) -> None:
    """Print a table's lines, and write them to ``out`` (a path) too when one is given."""
    table = "\n".join(lines)
    print(table)
    if out:
        Path(out).write_text(table + "\n", encoding="utf-8")
