"""Process memory for the benchmarks, in MiB: the peak so far and what is resident now, at named phases."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import torch


def peak_memory_mib(device: torch.device) -> float:
    """The peak of the run's memory: the GPU's allocations on a GPU, the process's resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return host_peak_mib()


def host_peak_mib() -> float:
    """The largest resident set this process has had (``ru_maxrss``; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_mib() -> float:
    """This process's resident set now (``/proc/self/statm``; the peak where the file is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return host_peak_mib()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Phases:
    """Resident and peak host memory, and the minor page faults so far, at named points of one worker's run, each
    name recorded once (the first time it is marked), so that a peak can be split into what came before the loop
    and what the loop added, and the loop's page faults counted (each one a fresh page the kernel zeroed)."""

    def __init__(self) -> None:
        self.marks: dict[str, dict[str, float]] = {}

    def mark(self, name: str) -> None:
        if name not in self.marks:
            self.marks[name] = {"resident_mib": resident_mib(), "peak_mib": host_peak_mib(),
                                "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}
