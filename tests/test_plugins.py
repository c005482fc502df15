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


# --- an error raised by a plugin during a run names the plugin and the hook -----------------------



FAULTY_HOOK = """
from jef import hookimpl

@hookimpl
def {hook}({args}):
    raise ZeroDivisionError("a bug in the plugin")
"""
HOOK_ARGS = {"jef_run_start": "run", "jef_train_step": "run, batch", "jef_after_backward": "run",
             "jef_step_end": "run, outputs, terms", "jef_epoch_end": "run, epoch, metrics",
             "jef_run_end": "run, metrics"}


@pytest.mark.parametrize("hook", list(HOOK_ARGS))
def test_an_error_in_a_run_hook_names_the_plugin_and_the_hook(hook, one_thread):
    from jef.testing import tiny_run

    with fake_distribution("jef-plugin-faulty", FAULTY_HOOK.format(hook=hook, args=HOOK_ARGS[hook])):
        plugins = load_plugins()
        with pytest.raises(ZeroDivisionError, match="a bug in the plugin") as error:
            tiny_run(steps=4, plugins=plugins)  # 4 steps: one epoch of the tiny data, so jef_epoch_end runs
    assert error.value.__notes__ == [f"jef: raised in hook {hook} of plugin 'faulty' (jef-plugin-faulty 0.1.0)"]
    assert error.traceback[-1].name == hook  # the traceback still ends where the bug is


FAULTY_COMPONENTS = """
import torch
from jef import hookimpl

class Exploding(torch.nn.Module):
    def forward(self, out):
        return self.explode(out.online.out[0])
    def explode(self, z):
        raise RuntimeError("the functional fails")

class Grumpy:
    @hookimpl
    def jef_step_end(self, run, outputs, terms):
        raise KeyError("the monitor fails")

@hookimpl
def jef_register_functionals(register):
    register("exploding", lambda options, ctx: Exploding())

@hookimpl
def jef_register_monitors(register):
    register("grumpy", lambda options, ctx: Grumpy())
"""


def test_an_error_in_a_functional_or_a_monitor_names_its_slot_and_plugin(one_thread):
    from jef.testing import tiny_run

    functionals = [{"name": "info_nce", "temperature": 0.5}, {"name": "exploding"}]
    with fake_distribution("jef-plugin-faulty", FAULTY_COMPONENTS):
        plugins = load_plugins()
        with pytest.raises(RuntimeError, match="the functional fails") as error:
            tiny_run({"functionals": functionals}, steps=2, plugins=plugins)
        assert error.value.__notes__ == [
            "jef: raised in functionals[1] (exploding from plugin faulty (jef-plugin-faulty 0.1.0)), called in hook "
            "jef_train_step of plugin 'builtin.step' (jef 0.1.0)"]
        with pytest.raises(KeyError, match="the monitor fails") as error:
            tiny_run({"monitors": [{"name": "grumpy"}]}, steps=2, plugins=plugins)
        assert error.value.__notes__ == [
            "jef: raised in hook jef_step_end of monitors[0] (grumpy from plugin faulty (jef-plugin-faulty 0.1.0))"]


def test_jef_train_prints_the_traceback_and_then_the_plugin_and_the_hook(tmp_path):
    import subprocess
    import sys

    import yaml

    from jef.testing import TINY_PIPELINE

    plugin = tmp_path / "faulty.py"
    plugin.write_text(FAULTY_HOOK.format(hook="jef_step_end", args=HOOK_ARGS["jef_step_end"]))
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(TINY_PIPELINE))
    result = subprocess.run([sys.executable, "-m", "jef", "--plugin", str(plugin), "train", str(pipeline), "--cpu",
                             "--run-dir", str(tmp_path / "run"), "train.max_steps=2"],
                            capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                               "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    lines = result.stderr.rstrip().splitlines()
    assert "Traceback (most recent call last):" in lines and 'raise ZeroDivisionError("a bug in the plugin")' in (
        result.stderr)
    assert lines[-2:] == ["ZeroDivisionError: a bug in the plugin",
                          f"jef: raised in hook jef_step_end of plugin {str(plugin)!r}"]


def test_a_one_line_error_from_a_plugin_hook_names_the_plugin_too(tmp_path, capsys, one_thread):
    import yaml

    from jef.cli import main
    from jef.testing import TINY_PIPELINE

    plugin = tmp_path / "needs_a_file.py"
    plugin.write_text("from jef import hookimpl\n\n@hookimpl\ndef jef_run_start(run):\n"
                      "    open('/nonexistent/jef-settings.json')\n")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(TINY_PIPELINE))
    code = main(["--plugin", str(plugin), "train", str(pipeline), "--cpu", "--run-dir", str(tmp_path / "run"),
                 "train.max_steps=1"])
    err = capsys.readouterr().err.rstrip().splitlines()
    assert code == 2 and "Traceback (most recent call last):" not in err  # the cli's one-line errors stay so
    assert err[-2:] == ["jef: error: [Errno 2] No such file or directory: '/nonexistent/jef-settings.json'",
                        f"jef: raised in hook jef_run_start of plugin {str(plugin)!r}"]
