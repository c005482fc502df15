"""Launchers: a run trains in as many processes as the launcher was asked for, or refuses; it says where it runs.

The subprocess tests use the real ``accelerate launch`` command a user types, on 2 CPU processes (gloo).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jef.config import merge
from jef.run.launch import LaunchError, RunEnvironment, check_process_count, detect_launcher, requested_processes
from jef.testing import TINY_PIPELINE

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
SIMPLE_LAUNCHER_ENV = {"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29500"}


def test_the_process_count_is_read_from_what_each_launcher_sets():
    assert requested_processes({"WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "x"}) == (4, True)
    assert requested_processes({"OMPI_COMM_WORLD_SIZE": "3"}) == (3, True)
    simple = ["accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "jef", "train", "p.yaml"]
    assert requested_processes(SIMPLE_LAUNCHER_ENV, simple) == (2, True)
    assert requested_processes(SIMPLE_LAUNCHER_ENV, ["accelerate", "launch", "--num_processes=3", "x.py"]) == (3, True)
    # From `accelerate config`: not on the command line, but the launcher set MASTER_ADDR for "more than one".
    assert requested_processes(SIMPLE_LAUNCHER_ENV, ["accelerate", "launch", "x.py"]) == (2, False)
    one = {key: value for key, value in SIMPLE_LAUNCHER_ENV.items() if not key.startswith("MASTER")}
    assert requested_processes(one, ["accelerate", "launch", "x.py"]) is None
    assert requested_processes({}, []) is None  # plain `jef train`


def test_the_launcher_is_named():
    assert detect_launcher({"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}) == "torchrun"
    assert detect_launcher({"WORLD_SIZE": "2", "ACCELERATE_MIXED_PRECISION": "no"}) == "accelerate launch"
    assert detect_launcher(SIMPLE_LAUNCHER_ENV) == "accelerate launch"
    assert detect_launcher({"PMI_SIZE": "2"}) == "mpirun"
    assert detect_launcher({"ACCELERATE_CONFIG_FILE": "x"}) == "none"


def test_fewer_processes_than_asked_is_refused_with_the_command_that_works():
    simple = ["accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "jef", "train", "p.yaml"]
    with pytest.raises(LaunchError) as raised:
        check_process_count(1, source="p.yaml", environ=SIMPLE_LAUNCHER_ENV, parent_command=simple)
    message = str(raised.value)
    assert message.startswith("p.yaml: the launcher asked for 2 processes but jef runs in 1: `accelerate launch` "
                              "without --multi_gpu uses Accelerate's simple launcher")
    assert "`accelerate launch --multi_gpu --num_processes 2 -m jef train PIPELINE --cpu`" in message
    assert "`torchrun --nproc_per_node 2 -m jef train PIPELINE --cpu`" in message
    with pytest.raises(LaunchError, match="asked for several processes .* --num_processes N"):
        check_process_count(1, environ=SIMPLE_LAUNCHER_ENV, parent_command=["accelerate", "launch", "x.py"])
    check_process_count(2, environ={"WORLD_SIZE": "2"})  # all joined
    check_process_count(1, environ={}, parent_command=[])  # nothing was asked


def test_the_environment_is_described_and_recorded():
    environment = RunEnvironment(world_size=2, device="cpu", precision="bf16", launcher="torchrun")
    assert environment.describe() == "2 processes (torchrun), device cpu, precision bf16"
    assert environment.record() == {"run/world_size": 2, "run/device": "cpu", "run/precision": "bf16",
                                    "run/launcher": "torchrun"}


def _launch(tmp_path: Path, launcher: list[str], extra: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(yaml.safe_dump(merge(TINY_PIPELINE, {"eval": {"knn": {"enabled": False}},
                                                             "train": {"max_steps": 3}})))
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [*launcher, "-m", "jef", "train", str(pipeline), "--run-dir", str(run_dir), *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    return done, run_dir


def test_accelerate_launch_cpu_with_two_processes_is_refused_not_run_on_one(tmp_path):
    done, run_dir = _launch(tmp_path, [ACCELERATE, "launch", "--cpu", "--num_processes", "2"], [])
    assert done.returncode != 0
    assert "jef: error: " in done.stderr and "the launcher asked for 2 processes but jef runs in 1" in done.stderr
    assert "accelerate launch --multi_gpu --num_processes 2 -m jef train PIPELINE --cpu" in done.stderr
    assert "Traceback" not in done.stderr.split("jef: error: ")[0].splitlines()[-1:]  # jef's line, not a crash
    assert not run_dir.exists()  # refused before anything was written


def test_accelerate_launch_multi_gpu_trains_in_two_cpu_processes_and_says_so(tmp_path):
    done, run_dir = _launch(tmp_path, [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2",
                                       "--main_process_port", "0"], ["--cpu"])
    assert done.returncode == 0, done.stderr[-3000:]
    banners = [line for line in done.stderr.splitlines() if line.startswith("jef: training on")]
    assert len(banners) == 1, banners  # printed once, by the main process
    assert re.fullmatch(r"jef: training on 2 processes \(accelerate launch\), device cpu(:0)?, precision no; "
                        r"run directory " + re.escape(str(run_dir)), banners[0]), banners[0]
    header = (run_dir / "pipeline.yaml").read_text().splitlines()[0]
    assert re.fullmatch(r"# trained on 2 processes \(accelerate launch\), device cpu(:0)?, precision no", header)
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert (first["run/world_size"], first["run/launcher"]) == (2, "accelerate launch")
    assert first["run/device"].startswith("cpu")
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2]  # 64 images, a global batch of 2 x 16: one epoch is 2 steps
