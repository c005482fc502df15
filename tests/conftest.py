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
