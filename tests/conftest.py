"""Fixtures shared by the core tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train many times faster on one thread than on several competing for a shared machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def buggy_backbone():
    """The source of a ``--plugin`` file whose backbone factory has a bug (an AttributeError at build)."""
    return (
        "from jef import hookimpl\n\n"
        "@hookimpl\n"
        "def jef_register_backbones(register):\n"
        "    def build(options, ctx):\n"
        "        return None.out_dim  # a bug in the plugin\n"
        "    register('buggy', build)\n")


@pytest.fixture(scope="module")
def benchmark_script():
    """``benchmark_script("scaling")``: ``benchmarks/scaling.py`` imported as module ``scaling``; the entry the
    scripts put on ``sys.path`` for their siblings is removed afterwards."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    there = folder in sys.path

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(folder) / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    yield load
    while not there and folder in sys.path:
        sys.path.remove(folder)
