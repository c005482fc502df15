"""benchmarks/gpu_check.sh stays runnable: the shell parses, and its Python helper answers ``--help``.

Cheap on purpose (no training): the script itself is exercised by ``bash benchmarks/gpu_check.sh --cpu-smoke``
(a few minutes on a CPU) and measured on a GPU; see benchmarks/README.md.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_help_runs_nothing():
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "--cpu-smoke" in proc.stdout


def test_gpu_step_help():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--help"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for option in ("--method", "--channels-last", "--compile", "precision-matrix"):
        assert option in proc.stdout, option
