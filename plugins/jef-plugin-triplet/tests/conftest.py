"""Fixtures shared by the triplet plugin's tests."""

import pytest

from jef.testing import installed_plugins


@pytest.fixture(scope="module")
def plugins():
    """Every installed plugin, this one included."""
    return installed_plugins("triplet")
