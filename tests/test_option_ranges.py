"""Out-of-range options are refused once, by the component's attrs options class, naming the YAML path.

The modules built from the options do not check the same ranges again (ARCHITECTURE §7: validate once), so
the message a user reads is the options' one, with the file and the key.
"""

from __future__ import annotations

import pytest

from jef.config import resolve
from jef.config.validate import ConfigError
from jef.plugins import load_plugins


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.mark.parametrize(("slots", "message"), [
    ({"energy": {"name": "scaled_cosine", "temperature": 0}}, "energy.temperature: must be > 0.0, got 0"),
    ({"energy": {"name": "cross_entropy", "temperature": -0.5}}, "energy.temperature: must be > 0.0, got -0.5"),
    ({"functionals": [{"name": "info_nce", "temperature": 0}]}, "functionals.0.temperature: must be > 0.0, got 0"),
    ({"functionals": [{"name": "queue_info_nce", "temperature": 0}]},
     "functionals.0.temperature: must be > 0.0, got 0"),
    ({"functionals": [{"name": "memory_bank", "loss": "nse"}]},
     "functionals.0.loss: expected one of 'nce', 'softmax', got 'nse'; did you mean 'nce'?"),
    ({"projector": {"name": "mlp", "dims": []}}, "projector.dims: length must be >= 1, got 0"),
    ({"projector": {"name": "mlp", "activation": "tanh"}}, "projector.activation: must be in ['gelu', 'relu']"),
    ({"backbone": {"name": "small_cnn", "width": 0}}, "backbone.width: must be >= 1, got 0"),
], ids=["scaled_cosine", "cross_entropy", "info_nce", "queue_info_nce", "memory_bank", "mlp.dims", "mlp.activation",
        "small_cnn"])
def test_a_built_in_option_out_of_range_is_refused_by_its_options(plugins, slots, message):
    with pytest.raises(ConfigError) as caught:
        resolve(slots, source="pipeline.yaml", registry=plugins.registry)
    assert str(caught.value).startswith(f"pipeline.yaml: {message}"), str(caught.value)


def test_a_method_plugin_option_out_of_range_is_refused_by_its_options(plugins):
    if "moco_v3_info_nce" not in plugins.registry.names("functional"):
        pytest.skip("jef-plugin-moco is not installed")
    with pytest.raises(ConfigError) as caught:
        resolve({"method": "moco_v3", "functionals": [{"name": "moco_v3_info_nce", "temperature": 0}]},
                source="pipeline.yaml", registry=plugins.registry)
    assert str(caught.value).startswith("pipeline.yaml: functionals.0.temperature: must be > 0.0, got 0")
