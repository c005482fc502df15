"""Plugin discovery: entry points, broken plugins, duplicates, misspelt hooks, allow/deny lists."""

from __future__ import annotations

import pytest

from jef.plugins import load_plugins
from jef.registry import RegistryError
from jef.testing import fake_distribution

ENERGY_PLUGIN = """
import attrs, torch
from jef import hookimpl

@attrs.frozen(kw_only=True)
class Options:
    scale: float = 2.0

class Twice(torch.nn.Module):
    symmetric = True
    def __init__(self, scale):
        super().__init__()
        self.scale = scale
    def forward(self, a, b):
        return self.scale * (a - b).pow(2).sum(dim=1)

@hookimpl
def jef_register_energies(register):
    register("{name}", lambda options, ctx: Twice(options.scale), options=Options, description="test energy")
"""


def test_entry_point_plugin_is_discovered_with_its_distribution():
    with fake_distribution("jef-plugin-demo", ENERGY_PLUGIN.format(name="demo_energy"), version="1.2.3"):
        plugins = load_plugins()
        entry = plugins.registry.get("energy", "demo_energy")
        info = plugins.infos["demo"]
    assert info.status == "ok"
    assert (info.distribution, info.version) == ("jef-plugin-demo", "1.2.3")
    assert info.provides == {"energy": ["demo_energy"]}
    assert "jef_register_energies" in info.hooks
    assert entry.provenance.plugin == "demo"
    assert entry.options().scale == 2.0


def test_uninstalled_plugin_is_gone():
    with fake_distribution("jef-plugin-demo", ENERGY_PLUGIN.format(name="demo_energy")):
        assert "demo" in load_plugins().infos
    plugins = load_plugins()
    assert "demo" not in plugins.infos
    with pytest.raises(RegistryError, match="unknown energy 'demo_energy'"):
        plugins.registry.get("energy", "demo_energy")


def test_broken_plugin_is_reported_and_others_still_load(capsys):
    with fake_distribution("jef-plugin-broken", "raise ImportError('needs libfoo')"), \
            fake_distribution("jef-plugin-good", ENERGY_PLUGIN.format(name="good_energy")):
        plugins = load_plugins()
    broken = plugins.infos["broken"]
    assert broken.status == "broken"
    assert broken.distribution == "jef-plugin-broken"
    assert "ImportError: needs libfoo" in broken.error
    assert "plugin 'broken' (jef-plugin-broken) failed to load" in capsys.readouterr().err
    assert plugins.infos["good"].status == "ok"
    assert plugins.registry.get("energy", "good_energy")


def test_plugin_failing_during_registration_is_isolated():
    source = """
from jef import hookimpl
@hookimpl
def jef_register_energies(register):
    register("half_done", lambda o, c: None)
    raise RuntimeError("registration exploded")
"""
    with fake_distribution("jef-plugin-halfway", source):
        plugins = load_plugins()
    assert plugins.infos["halfway"].status == "broken"
    assert "registration exploded" in plugins.infos["halfway"].error
    assert "half_done" not in plugins.registry.names("energy")  # nothing half-registered survives


def test_duplicate_names_fail_naming_both_providers_and_qualified_name_resolves():
    with fake_distribution("jef-plugin-one", ENERGY_PLUGIN.format(name="mse")):
        plugins = load_plugins()
    with pytest.raises(RegistryError) as error:
        plugins.registry.get("energy", "mse")
    message = str(error.value)
    assert "energy 'mse' is provided by several plugins" in message
    assert "builtin.energies:mse" in message and "one:mse" in message
    assert plugins.registry.get("energy", "one:mse").provenance.distribution == "jef-plugin-one"
    assert plugins.registry.get("energy", "builtin.energies:mse").provenance.plugin == "builtin.energies"


def test_misspelt_hook_marks_the_plugin_broken_with_a_suggestion(capsys):
    source = """
from jef import hookimpl
@hookimpl
def jef_register_energys(register):
    pass
"""
    with fake_distribution("jef-plugin-typo", source):
        plugins = load_plugins()
    info = plugins.infos["typo"]
    assert info.status == "broken"
    assert info.error == "unknown hook 'jef_register_energys'; did you mean 'jef_register_energies'?"
    assert "did you mean 'jef_register_energies'" in capsys.readouterr().err


def test_load_plugins_allow_list_empty_loads_none(monkeypatch):
    monkeypatch.setenv("JEF_LOAD_PLUGINS", "")
    with fake_distribution("jef-plugin-demo", ENERGY_PLUGIN.format(name="demo_energy")):
        plugins = load_plugins()
    assert plugins.infos["demo"].status == "disabled"
    assert "demo_energy" not in plugins.registry.names("energy")
    assert "mse" in plugins.registry.names("energy")  # built-ins always load


def test_load_plugins_allow_list_and_disable_list(monkeypatch):
    with fake_distribution("jef-plugin-aa", ENERGY_PLUGIN.format(name="aa_energy")), \
            fake_distribution("jef-plugin-bb", ENERGY_PLUGIN.format(name="bb_energy")):
        monkeypatch.setenv("JEF_LOAD_PLUGINS", "aa")
        allowed = load_plugins()
        monkeypatch.delenv("JEF_LOAD_PLUGINS")
        monkeypatch.setenv("JEF_DISABLE_PLUGINS", "aa")
        disabled = load_plugins()
    assert "aa_energy" in allowed.registry.names("energy") and "bb_energy" not in allowed.registry.names("energy")
    assert "aa_energy" not in disabled.registry.names("energy") and "bb_energy" in disabled.registry.names("energy")


def test_local_plugin_file(tmp_path):
    path = tmp_path / "my_energy.py"
    path.write_text(ENERGY_PLUGIN.format(name="local_energy"))
    plugins = load_plugins(entry_points=False, files=(path,))
    assert plugins.registry.get("energy", "local_energy").provenance.plugin == str(path)
    missing = load_plugins(entry_points=False, files=(tmp_path / "nope.py",))
    assert missing.infos[str(tmp_path / "nope.py")].status == "broken"
    assert "no such file" in missing.infos[str(tmp_path / "nope.py")].error


def test_addhooks_lets_a_plugin_publish_hooks():
    source = """
from jef import hookimpl
import pluggy
spec = pluggy.HookspecMarker("jef")

class Specs:
    @spec
    def jef_demo_extra(self, value):
        '''A hook published by a plugin.'''

@hookimpl
def jef_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(Specs)

@hookimpl
def jef_demo_extra(value):
    return value * 2
"""
    with fake_distribution("jef-plugin-publisher", source):
        plugins = load_plugins()
    assert plugins.infos["publisher"].status == "ok"
    assert plugins.manager.hook.jef_demo_extra(value=21) == [42]


def test_unknown_name_suggests_the_closest():
    plugins = load_plugins(entry_points=False)
    with pytest.raises(RegistryError, match="unknown backbone 'resnet19'; did you mean 'resnet18'"):
        plugins.registry.get("backbone", "resnet19")


def test_trace_plugins_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("JEF_TRACE_PLUGINS", "1")
    plugins = load_plugins(entry_points=False)
    plugins.manager.hook.jef_epoch_end(run=None, epoch=0, metrics={})
    assert "jef_epoch_end" in capsys.readouterr().err
