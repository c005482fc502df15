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

@hookimpl
def jef_register_monitors(register):
    register("quiet", lambda options, ctx: object())  # a pipeline that uses it selects the plugin
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
            # 4 steps: one epoch of the tiny data, so jef_epoch_end runs. The pipeline selects the plugin (it uses
            # its monitor): an installed plugin's run hooks take part only in the runs that select it.
            tiny_run({"monitors": [{"name": "quiet"}]}, steps=4, plugins=plugins)
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


# --- one check of jef_* attributes: loading, add_plugin, temporary_plugin and a run's own objects ---------


def test_the_hook_check_names_misspelt_and_unmarked_hooks_and_nothing_else():
    from jef import hookimpl
    from jef.names import hook_problems

    class Plugin:
        jef_note = "data, not a hook attempt"

        @hookimpl
        def jef_step_end(self, run, outputs, terms): ...

        @hookimpl
        def jef_step_ends(self, run, outputs, terms): ...

        def jef_run_end(self, run, metrics): ...

        @hookimpl(optionalhook=True)
        def jef_hook_of_another_plugin(self): ...

    assert hook_problems(Plugin(), load_plugins(entry_points=False).manager) == [
        "'jef_run_end' is not marked @jef.hookimpl, so pluggy would never call it; decorate it",
        "unknown hook 'jef_step_ends'; did you mean 'jef_step_end'?"]


def test_an_installed_plugin_with_an_unmarked_hook_is_broken_and_the_others_load(capsys):
    unmarked = "def jef_register_energies(register):\n    register('never', lambda o, c: None)\n"
    with fake_distribution("jef-plugin-unmarked", unmarked), \
            fake_distribution("jef-plugin-good", ENERGY_PLUGIN.format(name="good_energy")):
        plugins = load_plugins()
    info = plugins.infos["unmarked"]
    assert (info.status, info.error) == ("broken", "'jef_register_energies' is not marked @jef.hookimpl, so pluggy "
                                                   "would never call it; decorate it")
    assert "plugin 'unmarked' is broken: 'jef_register_energies' is not marked" in capsys.readouterr().err
    assert not plugins.manager.has_plugin("unmarked")
    assert plugins.registry.get("energy", "good_energy")


def test_add_plugin_and_temporary_plugin_check_hooks_as_loading_does():
    from jef import hookimpl
    from jef.plugins import add_plugin
    from jef.testing import temporary_plugin

    class Misspelt:
        @hookimpl
        def jef_epoch_ends(self, run, epoch, metrics): ...

    class Unmarked:
        def jef_epoch_end(self, run, epoch, metrics): ...

    plugins = load_plugins(entry_points=False)
    info = add_plugin(plugins, "misspelt", Misspelt())
    assert (info.status, info.error) == ("broken", "unknown hook 'jef_epoch_ends'; did you mean 'jef_epoch_end'?")
    assert not plugins.manager.has_plugin("misspelt")
    with pytest.raises(RuntimeError) as error, temporary_plugin(plugins, Unmarked()):
        pass
    assert str(error.value) == ("temporary_plugin: plugin 'Unmarked' is broken: 'jef_epoch_end' is not marked "
                                "@jef.hookimpl, so pluggy would never call it; decorate it")
    assert "Unmarked" not in plugins.infos and not plugins.manager.has_plugin("Unmarked")


def test_plugins_record_how_they_were_loaded(tmp_path):
    path = tmp_path / "local.py"
    path.write_text(ENERGY_PLUGIN.format(name="local_energy"))
    with fake_distribution("jef-plugin-demo", ENERGY_PLUGIN.format(name="demo_energy")):
        plugins = load_plugins(files=(path,), extra=(("extra", object()),))
    assert plugins.infos["builtin.energies"].origin == "builtin"
    assert plugins.infos["demo"].origin == "entry_point"
    assert plugins.infos[str(path)].origin == "file"
    assert plugins.infos["extra"].origin == "object"


BAD_MONITORS = """
from jef import hookimpl

class Misspelt:
    @hookimpl
    def jef_step_ends(self, run, outputs, terms): ...

class Unmarked:
    def jef_step_end(self, run, outputs, terms): ...

@hookimpl
def jef_register_monitors(register):
    register("misspelt", lambda options, ctx: Misspelt())
    register("unmarked", lambda options, ctx: Unmarked())
"""


def test_a_run_object_with_a_misspelt_or_unmarked_hook_fails_the_run_at_its_start_naming_it(one_thread):
    from jef.config import ConfigError
    from jef.testing import tiny_run

    with fake_distribution("jef-plugin-badmon", BAD_MONITORS):
        plugins = load_plugins()
        assert plugins.infos["badmon"].status == "ok"  # the plugin's own hooks are fine
        with pytest.raises(ConfigError) as misspelt:
            tiny_run({"monitors": [{"name": "misspelt"}]}, steps=2, plugins=plugins)
        with pytest.raises(ConfigError) as unmarked:
            tiny_run({"monitors": [{"name": "collapse"}, {"name": "unmarked"}]}, steps=2, plugins=plugins)
        with pytest.raises(ConfigError) as two:  # two monitors of one plugin: which slot made it is not clear
            tiny_run({"monitors": [{"name": "unmarked"}, {"name": "misspelt"}]}, steps=2, plugins=plugins)
    assert str(misspelt.value) == ("monitors[0] (misspelt from plugin badmon (jef-plugin-badmon 0.1.0)), class "
                                   "Misspelt: unknown hook 'jef_step_ends'; did you mean 'jef_step_end'?")
    assert str(unmarked.value) == ("monitors[1] (unmarked from plugin badmon (jef-plugin-badmon 0.1.0)), class "
                                   "Unmarked: 'jef_step_end' is not marked @jef.hookimpl, so pluggy would never call "
                                   "it; decorate it")
    assert str(two.value).startswith("the run's object of class Unmarked from plugin badmon: 'jef_step_end' is not "
                                    "marked")
    assert not [name for name in plugins.manager.list_name_plugin() if name[0].startswith("run:")]  # all gone


# --- an installed plugin's run hooks take part only in the runs that select it -----------------------------

CONSTANT_STEP = """
from jef import hookimpl
from jef.components import StepResult

@hookimpl
def jef_train_step(run, batch):
    return StepResult(next(run.model.parameters()).sum() * 0 + 7.0, {})

class Quiet:
    pass

@hookimpl
def jef_register_monitors(register):
    register("quiet", lambda options, ctx: Quiet())

@hookimpl
def jef_register_methods(register):
    register("constant", {"energy": {"name": "mse"}})
"""


@pytest.mark.parametrize("pipeline, selects", [
    ({}, False),
    ({"monitors": [{"name": "quiet"}]}, True),
    ({"method": "constant"}, True),
])
def test_an_installed_plugin_replaces_the_step_only_of_pipelines_that_select_it(pipeline, selects, one_thread):
    from jef.testing import tiny_run

    with fake_distribution("jef-plugin-constant", CONSTANT_STEP):
        plugins = load_plugins()
        result = tiny_run(pipeline, steps=2, plugins=plugins)
    assert (result.metrics["loss"] == 7.0) is selects, result.metrics["loss"]


def test_the_guide_s_step_replacing_plugin_ramps_the_loss_of_the_runs_that_use_its_method(one_thread):
    import json
    import re
    from pathlib import Path

    from jef.testing import tiny_run

    page = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")
    (source,) = re.findall(r"^```py\n(.*?)^```$", page, re.MULTILINE | re.DOTALL)
    with fake_distribution("jef-plugin-ramped", source):
        plugins = load_plugins()
        ramped = tiny_run({"method": "ramped"}, steps=2, plugins=plugins)
        plain = tiny_run({}, steps=2, plugins=plugins)

    def ramps(result):
        lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        return [line["ramp"] for line in lines if "ramp" in line]

    assert ramps(ramped) == pytest.approx([0.01, 0.02])  # (step + 1) / 100 at steps 0 and 1
    assert ramps(plain) == []
