"""benchmarks/profile_step.py: the per-step arithmetic of two profiles, the table it prints, its argument check.

The profiles themselves need lightly (tests/test_compare_lightly.py runs one in the benchmark environment); here
the profiler's totals are made up so that the subtraction, the order of the rows and the totals are checked.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def profile_step(benchmark_script):
    return benchmark_script("profile_step")


def test_per_step_subtracts_the_short_profile_after_a_discarded_warm_up(profile_step, monkeypatch):
    seen = []

    def fake_self_times(cfg):
        seen.append(cfg["steps"])
        steps = cfg["steps"]
        # 2 ms of conv per step plus 50 ms once; an operator only the long run reaches; wall 0.3 s a step + 1 s
        times = {"aten::conv": 2000.0 * steps + 50_000.0}
        calls = {"aten::conv": 3 * steps}
        if steps > 5:
            times["aten::late"] = 4000.0
            calls["aten::late"] = 2
        return times, calls, 0.3 * steps + 1.0

    monkeypatch.setattr(profile_step, "self_times", fake_self_times)
    args = profile_step.argparse.Namespace(short=5, long=25, method="simsiam", batch_size=8, width=4, image_size=0,
                                           blocks=[1, 1, 1, 1], stem="imagenet", threads=1, jef_override=[])
    ms, calls, wall = profile_step.per_step(args, "jef")
    assert seen == [5, 5, 25]  # the first short run is thrown away
    assert ms["aten::conv"] == pytest.approx(2.0)
    assert calls["aten::conv"] == pytest.approx(3.0)
    assert ms["aten::late"] == pytest.approx(4000.0 / 20 / 1000)
    assert wall == pytest.approx(300.0)


def test_table_orders_by_the_difference_and_totals_every_operator(profile_step):
    sides = {"jef": ({"aten::mm": 100.0, "aten::cat": 0.5, "aten::bn": 10.0}, {"aten::mm": 2, "aten::cat": 1,
                                                                             "aten::bn": 4}, 112.0),
             "lightly": ({"aten::mm": 101.0, "aten::bn": 14.0}, {"aten::mm": 2, "aten::bn": 6}, 117.0)}
    text = profile_step.table(sides, top=2)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["aten::bn", "aten::mm"]  # |−4| before |−1|; cat (0.5) cut
    assert "| `aten::bn` | 10.00 | 14.00 | -4.00 | 4.0 | 6.0 |" in text
    assert "| **all operators (self CPU)** | 110.5 | 115.0 | -4.5 | 7 | 8 |" in text
    assert "| **wall, profiled** | 112.0 | 117.0 | -5.0 | | |" in text


def test_long_must_exceed_short(profile_step, capsys):
    with pytest.raises(SystemExit):
        profile_step.main(["--short", "10", "--long", "10"])
    assert "--long (10) must exceed --short (10)" in capsys.readouterr().err
