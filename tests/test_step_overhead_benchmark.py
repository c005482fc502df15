"""benchmarks/step_overhead.py keeps working against the loop it drives: jef's loop body and the bare loop agree on
step 1 (the script asserts it) and the table has the method's row. No timing is asserted."""

from __future__ import annotations


def test_one_method_runs_through_jef_s_loop_and_the_bare_one(benchmark_script, capsys):
    module = benchmark_script("step_overhead")
    assert module.main(["--methods", "simclr", "--steps", "2", "--repeats", "1", "--threads", "1",
                        "--batch-size", "8", "--image-size", "16", "--width", "4"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| simclr |"))
    assert row.count("|") == 7 and "%" in row
