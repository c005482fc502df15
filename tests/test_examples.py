"""Every pipeline under ``examples/`` resolves and builds, and is listed in docs/examples.md.

Each file is resolved with the installed plugins (``jef.config.load_pipeline``) and built as ``jef config show``
builds it (``jef.model.build.check``: every component but the data), here under ``torch.device("meta")`` so that
ImageNet-sized models cost no memory or time. The data is not loaded: CIFAR-10 need not be downloaded, nor an
ImageFolder or ImageNet root exist. Nothing is trained. A new file in ``examples/`` is checked without a change here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jef.config import load_pipeline
from jef.model.build import check
from jef.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def test_there_are_examples():
    names = {path.name for path in EXAMPLES}
    assert {"demo.yaml", "cifar10_simclr.yaml", "imagenet_dino_vits16.yaml"} <= names, names


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_resolves_and_builds(path, plugins):
    pipeline = load_pipeline(str(path), [], registry=plugins.registry)
    with torch.device("meta"):
        check(pipeline)


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_has_a_header_and_a_line_in_the_docs(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    header = [line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]]
    assert len(header) >= 2, f"{path.name}: start with a comment: what it trains, its cost, what to change"
    listing = (ROOT / "docs" / "examples.md").read_text(encoding="utf-8")
    assert f"`examples/{path.name}`" in listing, f"{path.name} is not listed in docs/examples.md"
