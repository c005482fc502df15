"""Tests of the monitors that measure the backbone while it trains: ``online_linear`` and the periodic ``knn``."""

from __future__ import annotations

import json
import os
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from jef import hookimpl
from jef.builtin.online_linear import OnlineLinearMonitor, OnlineLinearOptions
from jef.builtin.periodic_knn import KnnMonitor, KnnMonitorOptions
from jef.run.checkpoint import load_checkpoint
from jef.components import Branch, DataSplits, RunContext, StepOutputs
from jef.config import merge
from jef.evaluate.knn import knn_evaluate
from jef.evaluate.online import OnlineLinearProbe
from jef.plugins import load_plugins
from jef.testing import LEARNING_SETTINGS, InterruptAt, fresh_plugins, run_in_processes, tiny_run

PROBES = [{"name": "collapse"}, {"name": "online_linear"}, {"name": "knn", "every_epochs": 1}]


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


class Brightness(Dataset):
    """4x4 greyscale images whose brightness is their class (0, 1, 2), with noise: easy for kNN."""

    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 3
        self.images = (self.labels.view(n, 1, 1, 1) * 60 + torch.randint(0, 80, (n, 1, 4, 4), generator=gen))
        self.images = self.images.to(torch.uint8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), i


def _splits(labelled=True, test=True):
    return DataSplits(Brightness(30, 0), Brightness(12, 1) if test else None, 3 if labelled else None, 1, 4,
                      name="brightness")


class FakeRun:
    """The part of jef.run.loop.Run the probes use."""

    def __init__(self, splits, backbone=None, rank=0):
        self.step, self.epoch, self.ctx, self.splits = 0, 0, RunContext(rank=rank), splits
        self.pipeline = SimpleNamespace(seed=0, eval=SimpleNamespace(knn=SimpleNamespace(k=7, temperature=0.2,
                                                                                          batch_size=8)))
        self.augmenter = SimpleNamespace(eval_view=lambda images: images.float() / 255)
        self.unwrapped_model = SimpleNamespace(backbone=backbone)
        self.accelerator = SimpleNamespace(device=torch.device("cpu"))


def _outputs(h, labels):
    branch = Branch(h=[h, h], z=[h[:, :2], h[:, :2]])
    return StepOutputs(online=branch, target=branch, n_global=2, labels=labels)


# -- the probe ---------------------------------------------------------------------------------------------


def test_probe_predicts_before_it_learns_and_skips_unlabelled_samples():
    probe = OnlineLinearProbe(3, 2)
    features = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]], requires_grad=True)
    correct, counted = probe.update(features, torch.tensor([0, 1, -1, 1]))
    # The head starts at zero, so every first prediction is class 0: right only for the sample labelled 0.
    assert (correct.item(), counted.item()) == (1, 3)
    assert features.grad is None  # features are detached: nothing flows back into the model
    assert probe.linear.weight.abs().sum() > 0
    before = probe.state_dict()["linear"]["weight"].clone()
    assert [t.item() for t in probe.update(features, torch.full((4,), -1))] == [0, 0]
    assert torch.equal(probe.linear.weight, before)  # no labelled sample, no step


def test_probe_state_round_trips_and_refuses_another_shape():
    probe = OnlineLinearProbe(3, 2, lr=0.1)
    probe.update(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    copy = OnlineLinearProbe(3, 2, lr=0.1)
    copy.load_state_dict(probe.state_dict())
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    probe.update(x, y)
    copy.update(x, y)  # the optimiser's moments came along, so the next step is the same
    assert torch.equal(probe.linear.weight, copy.linear.weight)
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*this run's has \(5, 3\).*pipeline the run was started"):
        OnlineLinearProbe(3, 5).load_state_dict(probe.state_dict())


# -- the online_linear monitor --------------------------------------------------------------------------------


def test_online_linear_reports_the_running_top1_of_each_epoch():
    monitor, run = OnlineLinearMonitor(OnlineLinearOptions(lr=0.1)), FakeRun(_splits())
    reference = OnlineLinearProbe(4, 3, lr=0.1)
    gen = torch.Generator().manual_seed(0)
    monitor.jef_run_start(run=run)
    expected, reported = [], []
    for epoch in range(2):
        run.epoch, correct, counted = epoch, 0, 0
        for _ in range(3):
            run.step += 1
            labels = torch.randint(-1, 3, (16,), generator=gen)
            h = torch.nn.functional.one_hot(labels.clamp_min(0), 4).float() + 0.1 * torch.randn(16, 4, generator=gen)
            monitor.jef_step_end(run=run, outputs=_outputs(h, labels), terms={})
            c, n = reference.update(h, labels)
            correct, counted = correct + c.item(), counted + n.item()
        metrics = {}
        monitor.jef_epoch_end(run=run, epoch=epoch, metrics=metrics)
        expected.append(correct / counted)
        reported.append(metrics["online/linear_top1"])
    assert reported == expected and reported[1] > reported[0]
    final = {}
    monitor.jef_run_end(run=run, metrics=final)
    assert final == {"online/linear_top1": expected[-1]}


def test_online_linear_says_once_that_the_data_has_no_labels():
    monitor, run = OnlineLinearMonitor(OnlineLinearOptions()), FakeRun(_splits(labelled=False))
    with pytest.warns(UserWarning, match="online_linear monitor is off for this run: data 'brightness' has no "
                                         "labels .*remove {name: online_linear} from monitors") as record:
        monitor.jef_run_start(run=run)
        for run.step in range(1, 4):
            monitor.jef_step_end(run=run, outputs=_outputs(torch.randn(4, 4), torch.full((4,), -1)), terms={})
    assert len(record) == 1
    metrics = {}
    monitor.jef_epoch_end(run=run, epoch=0, metrics=metrics)
    monitor.jef_run_end(run=run, metrics=metrics)
    assert metrics == {} and monitor.probe is None


def test_online_linear_says_once_when_the_step_gives_no_labels():
    monitor, run = OnlineLinearMonitor(OnlineLinearOptions()), FakeRun(_splits())
    monitor.jef_run_start(run=run)
    with pytest.warns(UserWarning, match="outputs carry no labels") as record:
        for run.step in range(1, 4):
            monitor.jef_step_end(run=run, outputs=_outputs(torch.randn(4, 4), None), terms={})
    assert len(record) == 1


def test_online_linear_refuses_labels_beyond_num_classes():
    monitor, run = OnlineLinearMonitor(OnlineLinearOptions()), FakeRun(_splits())
    monitor.jef_run_start(run=run)
    run.step = 1
    with pytest.raises(ValueError, match="a training label is 7 but data 'brightness' declares num_classes=3"):
        monitor.jef_step_end(run=run, outputs=_outputs(torch.randn(4, 4), torch.tensor([0, 1, 7, -1])), terms={})


# -- in real runs ------------------------------------------------------------------------------------------


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


def _epoch_lines(run_dir, key):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["step"] for line in lines if f"epoch/{key}" in line]


def test_probes_leave_the_ssl_run_bit_identical(tmp_path, plugins):
    # 64 images / 16 = 4 steps per epoch: two epochs, so the kNN runs twice and the probe crosses an epoch.
    plain = tiny_run({"train": {"epochs": 2}}, steps=8, run_dir=tmp_path / "plain", plugins=plugins)
    probed = tiny_run({"train": {"epochs": 2}, "monitors": PROBES}, steps=8, run_dir=tmp_path / "probed",
                      plugins=plugins)
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "probed")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert plain.metrics["loss"] == probed.metrics["loss"]
    assert _epoch_lines(tmp_path / "probed", "periodic/knn_top1") == [4, 8]
    assert _epoch_lines(tmp_path / "probed", "online/linear_top1") == [4, 8]
    # The last periodic kNN saw the final backbone with eval.knn's k and T: the end-of-training protocol.
    assert probed.metrics["periodic/knn_top1"] == probed.metrics["knn_top1"]
    assert probed.metrics["periodic/knn_epoch"] == 1
    assert 0 <= probed.metrics["online/linear_top1"] <= 1


def test_the_online_probe_learns_a_separable_task(plugins):
    # Four texture classes, 128 training images, 8 steps per epoch: chance is 0.25.
    settings = merge(LEARNING_SETTINGS, {"data": {"train_size": 128, "test_size": 32}, "train": {"batch_size": 16},
                                         "monitors": [{"name": "online_linear", "lr": 0.01}],
                                         "eval": {"knn": {"enabled": False, "baseline": False}}})
    result = tiny_run(settings, steps=96, plugins=plugins)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [line["epoch/online/linear_top1"] for line in lines if "epoch/online/linear_top1" in line]
    assert len(per_epoch) == 12
    assert result.metrics["online/linear_top1"] == per_epoch[-1]
    assert min(per_epoch[-3:]) > 0.4 and per_epoch[0] < 0.35


def _assert_same(a, b, where="state"):
    """Nested dicts, lists, tensors and numbers are equal, tensors bit for bit."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}.{i}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_the_probe_state_survives_resume_exactly(tmp_path, plugins):
    pipeline = {"monitors": [{"name": "online_linear", "lr": 0.01}], "train": {"epochs": 2},
                "eval": {"knn": {"enabled": False}}}
    straight = tiny_run(pipeline, steps=6, run_dir=tmp_path / "straight", plugins=plugins)
    stopper = InterruptAt(3)  # mid-epoch 0: the resumed run finishes counting epoch 0 with the restored counts
    plugins.manager.register(stopper, name="stopper")
    try:
        with pytest.raises(KeyboardInterrupt):
            tiny_run(pipeline, steps=6, run_dir=tmp_path / "resumed", plugins=plugins)
    finally:
        plugins.manager.unregister(name="stopper")
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["monitors"]["0"]["counted"] == 3 * 16
    resumed = tiny_run(pipeline, steps=6, run_dir=tmp_path / "resumed", plugins=plugins, resume=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["monitors"]["0"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["monitors"]["0"]
    assert a["probe"]["linear"]["weight"].abs().sum() > 0
    _assert_same(a, b)  # weights, AdamW moments and step counts, the epoch's counts, the last value
    assert resumed.metrics["online/linear_top1"] == straight.metrics["online/linear_top1"]


# -- the periodic knn monitor -----------------------------------------------------------------------------------


def _backbone():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8)).train()


def test_knn_runs_on_the_right_epochs_in_eval_mode_and_equals_knn_evaluate():
    backbone = _backbone()
    run = FakeRun(_splits(), backbone)
    monitor = KnnMonitor(KnnMonitorOptions(every_epochs=2, k=3))
    modes = []
    backbone.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    running_mean, rng = backbone[2].running_mean.clone(), torch.get_rng_state()
    monitor.jef_run_start(run=run)
    assert monitor.settings == {"k": 3, "temperature": 0.2, "batch_size": 8}  # unset ones from eval.knn
    logged = {}
    for epoch in range(5):
        metrics = {}
        monitor.jef_epoch_end(run=run, epoch=epoch, metrics=metrics)
        logged[epoch] = metrics
    assert [epoch for epoch, metrics in logged.items() if metrics] == [1, 3]
    assert modes and not any(modes) and backbone.training  # eval mode during, train mode after
    assert torch.equal(backbone[2].running_mean, running_mean)  # BatchNorm statistics untouched
    assert torch.equal(torch.get_rng_state(), rng)  # the training's random stream too
    expected = knn_evaluate(backbone, _splits(), run.augmenter.eval_view, k=3, temperature=0.2, batch_size=8)
    assert logged[3] == {"periodic/knn_top1": expected} and expected > 0.5
    final = {"knn_top1": 0.5}
    monitor.jef_run_end(run=run, metrics=final)
    assert final == {"knn_top1": 0.5, "periodic/knn_top1": expected, "periodic/knn_epoch": 3.0}


def test_knn_max_train_uses_one_fixed_subset_of_the_bank():
    banks = []
    for _ in range(2):
        monitor = KnnMonitor(KnnMonitorOptions(max_train=10))
        monitor.jef_run_start(run=FakeRun(_splits(), _backbone()))
        banks.append(list(monitor.splits.train.indices))
    assert banks[0] == banks[1] and len(banks[0]) == 10 and banks[0] == sorted(banks[0])
    monitor.jef_epoch_end(run=FakeRun(_splits(), _backbone()), epoch=0, metrics=(metrics := {}))
    assert 0 <= metrics["periodic/knn_top1"] <= 1


@pytest.mark.parametrize(("splits", "why"), [(_splits(labelled=False), "has no labels"),
                                             (_splits(test=False), "has no test split")])
def test_knn_says_once_when_it_cannot_run(splits, why):
    monitor, run = KnnMonitor(KnnMonitorOptions()), FakeRun(splits, _backbone())
    with pytest.warns(UserWarning, match=f"knn monitor is off for this run: data 'brightness' {why}") as record:
        monitor.jef_run_start(run=run)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = {}
        monitor.jef_epoch_end(run=run, epoch=0, metrics=metrics)
        monitor.jef_run_end(run=run, metrics=metrics)
    assert metrics == {}


# -- two processes -----------------------------------------------------------------------------------------------


def _two_process_job(rank: int, run_dir: str) -> dict:
    # What `accelerate launch` sets (as jef.testing.train_in_processes does).
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
    seen = {}

    class Capture:
        @hookimpl
        def jef_run_end(self, run, metrics):
            probe = next(m for m in run.monitors if isinstance(m, OnlineLinearMonitor)).probe
            seen["weight"] = probe.linear.weight.detach().clone()

    metrics = tiny_run({"train": {"epochs": 2}, "monitors": PROBES}, steps=4, run_dir=run_dir,
                       plugins=fresh_plugins(Capture())).metrics
    return {"metrics": metrics, **seen}


def test_two_processes_train_the_same_probe_and_agree_on_knn(tmp_path):
    import functools

    ranks = run_in_processes(functools.partial(_two_process_job, run_dir=str(tmp_path)))
    # 64 images / (16 x 2 processes) = 2 steps per epoch: two epochs, each probe step on the global batch of 32.
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
    for key in ("online/linear_top1", "periodic/knn_top1", "periodic/knn_epoch"):
        assert ranks[0]["metrics"][key] == ranks[1]["metrics"][key], key
    assert load_checkpoint(tmp_path / "checkpoint.pt")["monitors"]["1"]["counted"] == 0  # reset after epoch 1

