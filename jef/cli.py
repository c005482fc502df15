"""The ``jef`` command line. Every sub-command is registered through ``jef_register_commands``."""

from __future__ import annotations

import argparse
import os
import select
import sys
import traceback
from pathlib import Path

import jef
from jef.plugins import load_plugins
from jef.registry import BuildError, RegistryError
from jef.config.validate import ConfigError
from jef.run.checkpoint import CheckpointError


def _split_plugin_files(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take every ``--plugin FILE`` out of ``argv`` (it may stand before or after the command)."""
    rest, files = [], []
    items = iter(argv)
    for item in items:
        if item == "--plugin":
            value = next(items, None)
            if value is None:
                raise SystemExit("jef: error: --plugin needs a file path")
            files.append(value)
        elif item.startswith("--plugin="):
            files.append(item.split("=", 1)[1])
        else:
            rest.append(item)
    return rest, files


def build_parser(plugins) -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per registered command."""
    parser = argparse.ArgumentParser(prog="jef", description="jef: joint-embedding self-supervised learning.")
    parser.add_argument("--version", action="version", version=f"jef {jef.__version__}")
    parser.add_argument("--plugin", metavar="FILE", help="load a one-off plugin module (repeatable)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    seen: set[str] = set()
    for entry in plugins.registry.entries("command"):
        name = entry.name if entry.name not in seen else entry.qualified_name
        seen.add(name)
        sub = commands.add_parser(name, help=entry.description, description=entry.description)
        if entry.extra.get("arguments"):
            entry.extra["arguments"](sub)
        sub.set_defaults(handler=entry.factory)
    return parser


#: The exit status of a process killed by SIGPIPE (128 + 13), what ``yes | head`` reports under ``pipefail``.
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """Run ``jef`` with ``argv`` (default: the process's arguments); returns the exit status.

    Output read by a pipe that closes early (``jef config show FILE | head``) ends the command quietly with
    status 141, as a command killed by SIGPIPE does, instead of a ``BrokenPipeError`` traceback.
    """
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe must be caught while we can still handle it
        return status
    except BrokenPipeError:
        if not _stdout_closed():  # another pipe (a data loader's worker, a process group): an error to show
            raise
        # Python's documented recipe (library/signal.html, "Note on SIGPIPE"): point stdout at devnull so that
        # the interpreter's own flush at exit does not fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout without a file descriptor (a test's capture): nothing to flush
            pass
        return EXIT_BROKEN_PIPE


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (the output still buffered fails again, or poll says so)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        return False
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # not a file (a test's capture): not a closed pipe
        return False
    if not hasattr(select, "poll"):  # Windows: cannot tell; Python's recipe assumes stdout
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(mask & select.POLLERR for _, mask in poller.poll(0))


def _main(argv: list[str] | None) -> int:
    argv, files = _split_plugin_files(list(sys.argv[1:] if argv is None else argv))
    for file in files:  # asked for by name: a missing file is a mistake to fix, not a plugin to skip
        if not Path(file).is_file():
            what = "is a directory" if Path(file).is_dir() else "no such file"
            print(f"jef: error: --plugin {file}: {what}; give the path of a Python file that defines jef hooks "
                  f"(e.g. --plugin ./my_plugin.py), or install the plugin and drop --plugin", file=sys.stderr)
            return 2
    plugins = load_plugins(files=tuple(files))
    parser = build_parser(plugins)
    args, extra = parser.parse_known_args(argv)
    # argparse cannot take positionals after options (`FILE --resume a.b=1`): accept trailing overrides.
    unknown = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    args.plugins = plugins
    try:
        return int(args.handler(args) or 0)
    # A bad pipeline, name, file or checkpoint: the message says what to do. Notes: the plugin and hook that raised it.
    except (ConfigError, CheckpointError, RegistryError, FileNotFoundError) as error:
        print(f"jef: error: {error}", *getattr(error, "__notes__", ()), sep="\n", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # a diverged run: the message says what to try
        print(f"jef: error: {error}", *getattr(error, "__notes__", ()), sep="\n", file=sys.stderr)
        return 1
    except BuildError as error:
        # A bad file, value or missing package is said in the message; anything else is likely a bug: show where.
        if not isinstance(error.__cause__, OSError | ValueError | ImportError):
            traceback.print_exception(error.__cause__, file=sys.stderr)
        print(f"jef: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
