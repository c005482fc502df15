"""Fixtures shared by the DINO plugin's tests."""

import pytest

from jef.plugins import load_plugins


@pytest.fixture(scope="module")
def plugins():
    """Every installed plugin, this one included."""
    plugins = load_plugins()
    if plugins.infos.get("dino") is None:
        pytest.skip("jef-plugin-dino is not installed")
    return plugins
