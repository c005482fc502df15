"""No host-device synchronisation inside a training step, except where logging or a monitor asks for it.

A GPU runs kernels asynchronously; reading a tensor's value on the host (``.item()``, ``float(t)``, ``if t``,
``.tolist()``, ``.cpu()``) makes the host wait for every queued kernel, and the GPU then idles while the host
prepares the next step. The loop reads the loss only at ``train.log_every`` steps, epoch ends and checkpoints.

A CPU has no such sync to detect (``torch.cuda.set_sync_debug_mode`` is CUDA only), so this test counts the
Python-level calls that would force one: it patches the ``torch.Tensor`` methods that hand a value to the host
and runs the real loop with ``log_every`` larger than the run and no monitors (the collapse monitor reads its
diagnostics every ``every`` steps, by design). From one step's start to the next, no such call may happen, except
around the epoch's end (its mean terms are read there). Synchronising operations that happen inside C++
(``nonzero``, boolean masking) are not seen by this check.
"""

from __future__ import annotations

import importlib.util
import os
import traceback

import pytest
import torch

from jef import hookimpl
from jef.config import merge
from jef.plugins import load_plugins
from jef.testing import temporary_plugin, tiny_run

#: The ``torch.Tensor`` methods that copy a value to the host (each a sync on a GPU).
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")
#: Code that reads host tensors by design, never the device's: the data loader (in workers, on CPU tensors) and
#: the augmenter, whose random parameters are drawn and inspected on the CPU (its generator is a CPU one, so that
#: the views do not depend on the device; the images never come back).
HOST_SIDE = (f"{os.sep}torch{os.sep}utils{os.sep}data{os.sep}", f"jef{os.sep}augment{os.sep}")

NO_LOGGING = {"train": {"log_every": 1000, "epochs": 2}, "eval": {"knn": {"enabled": False}}, "monitors": []}
MULTI_CROP = {"n_local": 2, "local_size": 8, "blur_p": 0.0, "solarize_p": 0.0}
METHODS = {
    "simclr": {"method": "simclr"},
    "byol": {"method": "byol", "predictor": {"dims": [32, 16]}},  # EMA target, predictor
    "simsiam": {"method": "simsiam", "predictor": {"dims": [8, 16]}},
    "barlowtwins": {"method": "barlowtwins"},
    "vicreg": {"method": "vicreg"},
    # Sinkhorn codes, prototypes renormalised every step, a queue filling from the first step and used once full.
    "swav": {"method": "swav", "augmenter": MULTI_CROP,
             "functionals": [{"name": "sinkhorn", "n_prototypes": 16, "freeze_prototypes_steps": 2,
                              "queue_length": 32, "queue_start_epoch": 0}]},
    # EMA teacher, centre, teacher temperature warm-up, multi-crop.
    "dino_resnet": {"method": "dino_resnet", "augmenter": MULTI_CROP,
                    "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}},
    # The same on a tiny ViT, local views resizing its position embedding (no warm-up: longer than the run).
    "dino": {"method": "dino", "augmenter": {**MULTI_CROP, "size": 16},
             "backbone": {"name": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 4},
             "projector": {"name": "dino_head", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8},
             "functionals": [{"name": "centering", "teacher_temperature": 0.07}]},
    # EMA key encoder with shuffled BN and a queue of keys.
    "moco_v2": {"method": "moco_v2", "functionals": [{"name": "queue_info_nce", "size": 32, "temperature": 0.2}]},
    # A memory bank: index range checks, noise rows drawn per step, Z fixed on the first step, row updates.
    "instdisc": {"method": "instdisc", "projector": {"name": "mlp", "dims": [16], "batch_norm": False},
                 "functionals": [{"name": "memory_bank", "dim": 16, "noise_samples": 32}]},
}


class SyncCounter:
    """Counts host reads of tensor values per optimiser step: from one step's ``jef_train_step`` to the next."""

    def __init__(self) -> None:
        self.total = 0
        self.starts: list[int] = []

    @hookimpl(tryfirst=True)
    def jef_train_step(self, run, batch):
        self.starts.append(self.total)  # one call a step: no gradient accumulation here
        return None  # the default step (or the method's) computes the loss

    def per_step(self) -> list[int]:
        """Reads from the start of step ``k`` to the start of step ``k + 1``, for every step but the last."""
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.fixture
def counter(monkeypatch):
    counter = SyncCounter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, __original=original, **kwargs):
            if not any(part in frame.filename for frame in traceback.extract_stack(limit=12) for part in HOST_SIDE):
                counter.total += 1
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counter


@pytest.mark.parametrize("method", [m if isinstance(m, type(pytest.param())) else pytest.param(m, id=name)
                                    for name, m in METHODS.items()])
def test_a_step_reads_nothing_from_the_device_between_log_steps(method, plugins, counter, one_thread):

    steps, epoch_end = 7, 4  # 64 tiny images, batch 16: the first epoch ends with step 4
    with temporary_plugin(plugins, counter, name="sync-counter"):
        tiny_run(merge(NO_LOGGING, method), steps=steps, plugins=plugins)
    reads = dict(enumerate(counter.per_step(), start=1))
    assert len(reads) == steps - 1
    assert reads.pop(epoch_end) > 0  # the epoch's end reads its mean terms (and shows that the counter counts)
    assert reads == dict.fromkeys(reads, 0)


def test_a_step_asks_nothing_of_the_file_system(plugins, counter, monkeypatch, one_thread):
    """Accelerate asks importlib whether ``lomo_optim`` is installed at every optimizer step, a search of every
    ``sys.path`` entry (``jef.run.accelerate_compat`` answers it once per process); nothing else may search per step.
    Without the cache this fails with ``(2, 'lomo_optim')``."""
    asked: list[tuple[int, str]] = []
    find_spec = importlib.util.find_spec

    def counted(name, *args, **kwargs):
        asked.append((len(counter.starts), name))
        return find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", counted)
    with temporary_plugin(plugins, counter, name="sync-counter"):
        tiny_run(merge(NO_LOGGING, METHODS["simclr"]), steps=6, plugins=plugins)
    assert len(counter.starts) == 6
    # Steps 2, 3 and 5: Accelerate asks about deepspeed when an epoch's data runs out (step 4) and when the run
    # ends (after step 6 starts): once an epoch and once a run, not every step.
    assert [(step, name) for step, name in asked if step in (2, 3, 5)] == []
