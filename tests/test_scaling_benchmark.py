"""benchmarks/scaling.py: every row it would train is a valid pipeline, one row trains, and the table flags growth."""

from __future__ import annotations

import pytest

from jef.config import resolve
from jef.plugins import load_plugins


@pytest.fixture(scope="module")
def scaling(benchmark_script):
    return benchmark_script("scaling")


def test_every_row_of_every_axis_resolves(scaling):
    registry = load_plugins().registry
    for axis, rows in scaling.AXES.items():
        for label, row, _ in rows:
            pipeline = resolve(scaling.pipeline_of(row, steps=5), source=f"<{axis}: {label}>", registry=registry)
            assert pipeline.train.batch_size == row["batch"]
            assert pipeline.data.train_size >= row["batch"] * row.get("processes", 1) * 5  # enough for every step


def test_one_row_trains_and_reports_its_step_and_memory(scaling):
    result = scaling.measure_here({"method": "simclr", "batch": 8, "image_size": 16}, steps=4, warmup=1, threads=1)
    assert result["ms"] > 0
    assert result["added_mib"] >= 0


def test_the_table_flags_growth_beyond_the_work(scaling):
    rows = [("a", {}, 1.0), ("b", {}, 2.0), ("c", {}, 2.0)]
    results = [[{"ms": 10.0, "added_mib": 100.0}], [{"ms": 21.0, "added_mib": 190.0}],
               [{"ms": 30.0, "added_mib": 400.0}]]
    lines = scaling.table("batch", rows, results)
    assert lines[-2].endswith("| 2.00x |  |")  # 2.1x time for 2x work: within the slack
    assert "grows faster than the work: time, memory" in lines[-1]  # 3x time and 4x memory for 2x work
