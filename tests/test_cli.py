"""The jef command line: plugins, list, config show, train, errors a user reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from jef.cli import main
from jef.testing import fake_distribution

LOCAL_PLUGIN = """
from jef import hookimpl

@hookimpl
def jef_register_commands(register):
    register("hello", lambda args: print(f"hello {args.who}") or 0,
             arguments=lambda parser: parser.add_argument("who"), description="say hello")
"""


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plugins_lists_an_installed_plugin_and_a_broken_one_as_json(capsys):
    with fake_distribution("jef-plugin-ok", "from jef import hookimpl\n"
                           "@hookimpl\ndef jef_register_methods(register):\n"
                           "    register('okmethod', {'energy': {'name': 'mse'}})\n", version="0.3.0"), \
            fake_distribution("jef-plugin-bad", "import does_not_exist\n"):
        code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["ok"]["status"] == "ok" and rows["ok"]["version"] == "0.3.0"
    assert rows["ok"]["provides"] == {"method": ["okmethod"]}
    assert rows["ok"]["hooks"] == ["jef_register_methods"]
    assert rows["bad"]["status"] == "broken"
    assert "No module named 'does_not_exist'" in rows["bad"]["error"]
    assert "builtin.energies" not in rows  # built-ins only with --all


def test_plugins_text_output_marks_broken(capsys):
    with fake_distribution("jef-plugin-bad", "raise RuntimeError('boom')\n"):
        code, out, _ = run_cli(capsys, "plugins")
    assert code == 0
    assert "bad [jef-plugin-bad 0.1.0]: BROKEN" in out and "RuntimeError: boom" in out


def test_list_shows_options_and_defaults(capsys):
    code, out, _ = run_cli(capsys, "list", "energy")
    assert code == 0
    assert "scaled_cosine  (builtin.energies" in out
    assert "temperature: float = 0.1" in out
    code, out, _ = run_cli(capsys, "list", "head", "--json")
    mlp = next(row for row in json.loads(out) if row["name"] == "mlp")
    assert {"name": "dims", "type": "list[int]", "default": [2048, 128]}.items() <= mlp["options"][0].items()


def test_config_show_prints_objective_and_providers(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""
        energy: {name: scaled_cosine, temperature: 0.5}
        functionals: [{name: info_nce, temperature: 0.5, weight: 0.5}]
    """))
    code, out, _ = run_cli(capsys, "config", "show", str(path), "train.epochs=3")
    assert code == 0
    assert "# objective  L = 1·mean_(a,b) D[scaled_cosine](p_a, t_b) + 0.5·F[info_nce](H)" in out
    assert "# energy (D)           scaled_cosine          builtin.energies (jef " in out
    assert "# functionals.0 (A/B)  info_nce               builtin.functionals (jef " in out
    assert "epochs: 3" in out


def test_config_error_exits_2_with_the_message(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("energy: {name: scaled_cosin}\n")
    code, _, err = run_cli(capsys, "config", "show", str(path))
    assert code == 2
    assert err.strip().startswith(f"jef: error: {path}: energy.name: unknown energy 'scaled_cosin'; "
                                  "did you mean 'scaled_cosine'?")


def test_local_plugin_file_adds_a_command(tmp_path, capsys):
    plugin = tmp_path / "hello_plugin.py"
    plugin.write_text(LOCAL_PLUGIN)
    code, out, _ = run_cli(capsys, "hello", "world", "--plugin", str(plugin))
    assert code == 0 and out.strip() == "hello world"


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "jef", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("jef 0.1.0")


@pytest.mark.parametrize("argv", [["train"], ["config"]])
def test_missing_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == 2
    assert "usage: jef" in capsys.readouterr().err


def test_train_with_overrides_after_options_prints_knn(tmp_path, capsys):
    import yaml

    from jef.testing import TINY_PIPELINE

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(TINY_PIPELINE))
    code, out, _ = run_cli(capsys, "train", str(path), "--run-dir", str(tmp_path / "run"), "--cpu",
                           "train.max_steps=2", "eval.knn.baseline=true")
    assert code == 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert re.search(r"trained backbone +\d\.\d{4}\n +random-init backbone +\d\.\d{4}\n", out)
    assert out.rstrip().endswith(f"run directory: {tmp_path / 'run'}")
    with pytest.raises(SystemExit):
        main(["config", "show", str(path), "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_component_that_fails_to_build_is_one_message_or_a_plugin_traceback(tmp_path, capsys, buggy_backbone):
    missing = tmp_path / "no-such-folder"
    pipeline = tmp_path / "folder.yaml"
    pipeline.write_text(f"method: simclr\ndata: {{name: image_folder, root: {missing}}}\n")
    code, out, err = run_cli(capsys, "train", str(pipeline), "--run-dir", str(tmp_path / "run"), "--cpu")
    assert code == 2 and "Traceback" not in err  # the user's input: a message only
    assert err.startswith(f"jef: error: {pipeline}: data: building dataset 'image_folder' from plugin builtin.datasets")
    assert f"FileNotFoundError: image_folder: {missing} is not a directory" in err

    plugin = tmp_path / "buggy.py"
    plugin.write_text(buggy_backbone)
    buggy = tmp_path / "buggy.yaml"
    buggy.write_text("method: simclr\ndata: {name: synthetic, train_size: 64}\nbackbone: {name: buggy}\n"
                     "train: {batch_size: 16}\n")
    code, out, err = run_cli(capsys, "--plugin", str(plugin), "train", str(buggy), "--run-dir", str(tmp_path / "b"),
                             "--cpu")
    assert code == 2
    assert "Traceback" in err and "return None.out_dim" in err  # a bug in a plugin: where it is
    assert err.rstrip().splitlines()[-1].startswith(f"jef: error: {buggy}: backbone: building backbone 'buggy' from ")
