"""The benchmarks' memory accounting: phases recorded once each, and compare_lightly's table of what each
phase added to a worker's peak (made-up reports: no training here)."""

from __future__ import annotations

import argparse

import pytest


@pytest.fixture(scope="module")
def compare_lightly(benchmark_script):
    return benchmark_script("compare_lightly")


def test_a_phase_keeps_its_first_mark(compare_lightly):
    import memory

    phases = memory.Phases()
    phases.mark("start")
    first = dict(phases.marks["start"])
    ballast = bytearray(64 * 2**20)  # 64 MiB resident before the second mark
    ballast[::4096] = b"x" * len(ballast[::4096])
    phases.mark("start")
    phases.mark("later")
    assert phases.marks["start"] == first
    assert phases.marks["later"]["peak_mib"] >= first["peak_mib"]
    assert phases.marks["later"]["resident_mib"] >= first["resident_mib"] + 32  # the ballast is counted
    assert 0 < phases.marks["later"]["resident_mib"] <= phases.marks["later"]["peak_mib"] + 1
    del ballast


def _run(framework: str, mode: str, peaks: tuple[float, float, float, float], faults_per_step: int | None = None,
         steps: int = 10) -> dict:
    marks = {p: {"peak_mib": v, "resident_mib": v} for p, v in zip(("start", "setup", "loop_start", "loop_end"),
                                                                     peaks, strict=True)}
    if faults_per_step is not None:  # raw results from before the harness counted faults have none
        marks["loop_start"]["minor_faults"], marks["loop_end"]["minor_faults"] = 1000, 1000 + faults_per_step * steps
    return {"method": "simclr", "framework": framework, "mode": mode, "images_per_s": 100.0, "ms_per_step": 10.0,
            "peak_mib": peaks[-1], "knn_top1": 0.5, "linear_top1": 0.5, "final_loss": 1.0, "memory": marks,
            "steps": steps}


def test_the_table_splits_each_peak_by_phase(compare_lightly):
    report = {"header": {"command": "c", "date": "d", "machine": "m", "lightly": "1", "load_before": [0.0]},
              "results": [_run("jef", "train", (500, 560, 700, 1000), 500),
                          _run("jef", "train", (500, 580, 720, 1100), 700),
                          _run("lightly", "train", (700, 760, 800, 900))]}
    args = argparse.Namespace(methods=["simclr"], frameworks=["jef", "lightly"])
    text = compare_lightly.markdown(report, args)
    # medians over jef's two runs: 500, 570, 710, 1050 -> added 500, 70, 140, 340; faults 500 and 700 a step
    assert "| simclr | jef | train | 500 | 70 | 140 | 340 | 1050 | 600 |" in text
    assert "| simclr | lightly | train | 700 | 60 | 40 | 100 | 900 | — |" in text


def test_reports_from_before_the_phases_print_no_phase_table(compare_lightly):
    run = _run("jef", "train", (1, 2, 3, 4))
    del run["memory"]
    report = {"header": {"command": "c", "date": "d", "machine": "m", "lightly": "1", "load_before": [0.0]},
              "results": [run]}
    text = compare_lightly.markdown(report, argparse.Namespace(methods=["simclr"], frameworks=["jef"]))
    assert "by phase" not in text and "| simclr | jef |" in text
