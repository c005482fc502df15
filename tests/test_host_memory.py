"""train.cpu_malloc: with ``reuse`` a CPU run's large blocks come back without page faults; afterwards, and with
``system``, glibc maps fresh pages again; a bad value is refused with the setting's path."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from jef.config import resolve
from jef.config.validate import ConfigError
from jef.plugins import load_plugins
from jef.run.host_memory import cpu_malloc

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the allocator's knobs are glibc's")
PAGES = 64 * 2**20 // 4096  # a 64 MiB block: above glibc's largest mmap threshold (32 MiB)

# Run in a fresh interpreter: what the heap already holds (earlier tests' freed memory) would change the counts.
PROBE = textwrap.dedent(f"""
    import json, resource, sys
    import torch
    from jef.run.host_memory import cpu_malloc

    PAGES = {PAGES}

    def resident_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def faults_per_step(steps=6):
        # minor page faults of steps that make and free three 64 MiB tensors, as a step makes its activations
        faults = []
        for _ in range(steps):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            a, b = torch.empty(PAGES * 1024), torch.empty(PAGES * 1024)
            a.fill_(1.0)
            b.fill_(2.0)
            c = a + b
            del a, b, c
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return faults

    out = {{"system": faults_per_step()}}
    before = resident_mib()
    try:
        with cpu_malloc("reuse", "cpu") as changed:
            out["changed"] = changed
            out["reuse"] = faults_per_step()
            out["kept_mib"] = resident_mib() - before
            if sys.argv[1] == "raise":
                raise RuntimeError("stop")
    except RuntimeError:
        out["raised"] = True
    out["returned_mib"] = resident_mib() - before
    out["after"] = faults_per_step()
    print(json.dumps(out))
""")


def _probe(how: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, how], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
@pytest.mark.parametrize("how", ["return", "raise"])
def test_reuse_keeps_freed_blocks_and_the_run_s_end_gives_them_back(how):
    out = _probe(how)
    assert out["changed"] and out.get("raised", False) == (how == "raise")
    every_page = 3 * PAGES * 8 // 10
    assert min(out["system"][-3:]) > every_page, out  # glibc's defaults: each block mapped afresh at each step
    assert sum(out["reuse"][-3:]) < 3 * PAGES // 10, out  # reuse: after the first steps the pages are reused
    assert out["kept_mib"] > 150, out  # the three freed 64 MiB blocks stay in the process during the run
    assert out["returned_mib"] < 50, out  # and go back to the system when it ends, however it ends
    # glibc's limits again: freed blocks go back to the system at every step (not all three: glibc's own
    # adjustment of its mmap threshold stays off once mallopt has set one, and the heap's top serves some)
    assert min(out["after"][-3:]) > PAGES * 8 // 10, out


@pytest.mark.parametrize(("mode", "device"), [("system", "cpu"), ("reuse", "meta")])
def test_system_or_a_non_cpu_device_changes_nothing(mode, device):
    with cpu_malloc(mode, device) as changed:
        assert not changed


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="train.cpu_malloc must be 'reuse' or 'system', got 'fast'"), \
            cpu_malloc("fast", "cpu"):
        pass


def test_the_pipeline_refuses_an_unknown_mode():
    registry = load_plugins().registry
    with pytest.raises(ConfigError, match="train.cpu_malloc"):
        resolve({"method": "simclr", "train": {"cpu_malloc": "fast"}}, registry=registry)
    assert resolve({"method": "simclr"}, registry=registry).train.cpu_malloc == "reuse"


def _losses(run_dir) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


def test_the_setting_changes_no_number_and_a_run_resumes_with_it_switched(tmp_path):
    from jef.testing import tiny_run

    reuse, system = tmp_path / "reuse", tmp_path / "system"
    tiny_run(steps=3, run_dir=reuse)
    tiny_run({"train": {"cpu_malloc": "system"}}, steps=3, run_dir=system)
    assert _losses(reuse) == _losses(system)  # where memory comes from changes no value
    tiny_run({"train": {"cpu_malloc": "system"}}, steps=4, run_dir=reuse, resume=True)
    assert len(_losses(reuse)) == 4
