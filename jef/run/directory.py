"""Who owns a run directory: one writer at a time, and never a run overwritten without being asked.

``jef train`` (and :func:`jef.run.loop.train`) claims its run directory before it
writes anything there:

* the directory must be usable: a directory (or a path that can be created as
  one) that this process can write to;
* the main process takes an exclusive lock, ``RUN/.lock`` (``fcntl.flock``,
  holding the pid and host): a second ``jef train`` into the same directory is
  refused, naming the process that holds it. The kernel drops the lock when its
  process dies, so a lock left by a killed run is stale and simply taken over;
* a directory that already holds a run (:data:`RUN_FILES`) is refused unless the
  run is continued (``--resume``) or replaced (``--overwrite``, which renames the
  old run to a sibling ``NAME.old-<time>`` in one atomic rename and says so);
* on resume, ``metrics.jsonl`` loses the lines the interrupted run wrote after
  its checkpoint (they are trained again), so it holds one history.

Under several processes only the main process touches the directory; the
others learn its verdict, so every process raises the same error.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from jef.run.checkpoint import CHECKPOINT_NAME, check_resumable, load_checkpoint, restore_run
from jef.run.launch import RunEnvironment
from jef.run.log import METRICS_NAME, MetricsLogger, build_loggers, view_grid, write_run_files
from jef.config.validate import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected against a second writer there
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RUN_FILES", "RunDir", "RunDirError", "RunDirLock", "claim_run_dir", "holds_run",
           "run_directory"]

#: Files only a run writes: a directory holding one of them holds a run (``pipeline.yaml`` may be the user's input).
RUN_FILES = (CHECKPOINT_NAME, METRICS_NAME, "plugins.json")
#: The lock file the writing process holds in its run directory.
LOCK_NAME = ".lock"

_CHOICES = ("continue it with --resume, train into a new --run-dir, or replace it with --overwrite (the old run "
            "is moved aside to {name}.old-<time>); in Python: train(..., resume=True) or train(..., overwrite=True)")


class RunDirError(ConfigError):
    """The run directory cannot be used: not a writable directory, already holding a run, or written by another
    process. The message names the directory and what to do."""


def run_directory(pipeline: Any, run_dir: str | Path | None) -> Path:
    """The run directory of ``pipeline``: ``run_dir``, else the pipeline's ``run_dir``, else ``runs/<file stem>``."""
    return Path(run_dir or pipeline.run_dir or Path("runs") / Path(pipeline.source).stem).expanduser()


def holds_run(directory: Path) -> bool:
    """True when ``directory`` holds (part of) a run: one of :data:`RUN_FILES`."""
    return any((directory / name).exists() for name in RUN_FILES)


@attrs.define(eq=False)
class RunDir:
    """A claimed run directory, handed to the training loop.

    Attributes:
        directory: The run directory.
        resumed: The checkpoint to resume from (already checked against the pipeline), or None.
        main: Whether this process writes the directory (the main process).
    """

    directory: Path
    resumed: dict[str, Any] | None
    main: bool
    logger: MetricsLogger | None = None  # closed when the claim ends, however the run ended

    def open(self, run: Any, plugins: list[dict[str, Any]]) -> MetricsLogger:
        """Restore the checkpoint to resume into ``run``, then write the run's files and open its metrics.

        The checkpoint comes first: one that does not fit the model raises before the directory is touched.
        Only the main process writes ``pipeline.yaml`` (headed by where the run trains), ``plugins.json`` and
        ``metrics.jsonl``, whose first line (of this part of the run) says the same, and builds and opens the
        pipeline's ``loggers:``; a resumed run's metrics (and loggers) lose what was written after its checkpoint's
        step (those steps are trained again).

        Args:
            run: The freshly built :class:`jef.run.state.Run`.
            plugins: The plugin listing to save (:func:`jef.run.log.plugin_listing`).
        """
        if self.resumed is not None:
            restore_run(run, self.resumed)
        loggers = build_loggers(run.pipeline, run.ctx) if self.main else []  # main process only, before any write
        environment = RunEnvironment.of(run.accelerator, run.pipeline.train.precision)
        if self.main:
            write_run_files(self.directory, run.pipeline.to_dict(), plugins,
                            header=f"trained on {environment.describe()}")
        resumed_from = None if self.resumed is None else int(self.resumed["step"])
        self.logger = MetricsLogger(self.directory, enabled=self.main, resumed_from=resumed_from, loggers=loggers,
                                    views=lambda: view_grid(run), epoch=lambda: run.epoch,
                                    pipeline=run.pipeline.to_dict())
        if self.main:  # where it runs, said once (the main process) and kept as the first line of this part's log
            print(f"jef: training on {environment.describe()}; run directory {self.directory}", file=sys.stderr)
            self.logger.write(run.step, environment.record())
        return self.logger

    def already_complete(self, total: int) -> dict[str, float] | None:
        """When the resumed checkpoint has done ``total`` steps or more, say so and return the run's final metrics.

        Nothing is trained, evaluated or written then: the run directory stays as it was.

        Returns:
            The final metrics recorded in ``metrics.jsonl`` (``{}`` when none were), or None when there is
            training left to do.
        """
        if self.resumed is None or int(self.resumed["step"]) < total:
            return None
        done = int(self.resumed["step"])
        final = recorded_final_metrics(self.directory)
        if self.main:
            print(f"jef: {self.directory}: already complete ({done} steps done, this pipeline trains {total}); "
                  f"nothing trained, evaluated or written" + ("" if final else "; evaluate it with `jef eval`"),
                  file=sys.stderr)
        return final


def recorded_final_metrics(directory: Path) -> dict[str, float]:
    """The last ``final/...`` metrics line of ``directory``'s ``metrics.jsonl``, without the prefix."""
    path, final = directory / METRICS_NAME, {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            row = _parse(line)
            if row and any(key.startswith("final/") for key in row):
                final = {key.removeprefix("final/"): value for key, value in row.items() if key.startswith("final/")}
    return final


@contextmanager
def claim_run_dir(pipeline: Any, run_dir: str | Path | None, accelerator: Any, *, resume: bool | str = False,
                  overwrite: bool = False) -> Iterator[RunDir]:
    """Claim the run directory for a training run, for the duration of the ``with`` block.

    Args:
        pipeline: The validated pipeline.
        run_dir: The directory asked for (None: the pipeline's, see :func:`run_directory`).
        accelerator: The run's Accelerator: its main process claims and locks; the others follow its verdict.
        resume: Continue the run in the directory (``"force"``: even with a changed pipeline).
        overwrite: Move a run already in the directory aside to ``NAME.old-<time>`` and start afresh.

    Yields:
        The claimed directory, with the checkpoint to resume.

    Raises:
        RunDirError: The directory is not usable, holds a run (and neither ``resume`` nor ``overwrite`` was
            given), or another process holds its lock.
        FileNotFoundError: ``resume`` without a checkpoint in the directory.
        jef.run.checkpoint.CheckpointError: The checkpoint to resume is unreadable or from another pipeline.
    """
    directory = run_directory(pipeline, run_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: continue the run or replace it",
                          source=str(directory))
    lock, refusal = None, None
    created = [d for d in (directory, *directory.parents) if not d.exists()]  # removed if left empty
    if accelerator.is_main_process:
        try:
            lock = _claim(directory, resume=bool(resume), overwrite=overwrite)
        except Exception as error:  # raised below, once the other processes know (else they would wait for it)
            refusal = error
    if accelerator.num_processes > 1:  # every process raises the main process's refusal, none waits for it
        from accelerate.utils import broadcast_object_list

        verdict = broadcast_object_list([None if refusal is None else str(refusal)])[0]
        refusal = refusal or (RunDirError(verdict) if verdict is not None else None)
    if refusal is not None:
        raise refusal
    claimed = None
    try:
        resumed = None
        if resume and not (directory / CHECKPOINT_NAME).is_file() and holds_run(directory):
            raise RunDirError("holds a run that saved no checkpoint (it stopped before its first one): nothing to "
                              "resume; start it again with --overwrite (the old run is moved aside)",
                              source=str(directory))
        if resume:  # before anything is built or written: a refused resume leaves the run directory as it was
            resumed = load_checkpoint(directory / CHECKPOINT_NAME)
            check_resumable(resumed, pipeline.to_dict(), directory / CHECKPOINT_NAME, force=resume == "force")
        claimed = RunDir(directory, resumed, accelerator.is_main_process)
        yield claimed
    finally:
        if claimed is not None and claimed.logger is not None:  # a run that raised leaves no open file behind
            claimed.logger.close()
        if lock is not None:
            lock.release()
            for made in created:  # a run that failed before writing anything leaves no empty folders behind
                if not made.is_dir() or any(made.iterdir()):
                    break
                made.rmdir()


def _claim(directory: Path, *, resume: bool, overwrite: bool) -> RunDirLock:
    """Make ``directory`` usable, lock it and move an old run aside when asked; refuse a run already there."""
    _make_directory(directory)
    lock = RunDirLock.acquire(directory)
    if not holds_run(directory) or resume:
        return lock
    if not overwrite:
        lock.release()
        found = ", ".join(name for name in RUN_FILES if (directory / name).exists())
        raise RunDirError(f"holds a run already ({found}); " + _CHOICES.format(name=directory.name),
                          source=str(directory))
    return _move_aside(directory, lock)


def _make_directory(directory: Path) -> None:
    """Create ``directory`` (and its parents), or say in one line why it cannot be a run directory."""
    if directory.exists() and not directory.is_dir():
        raise RunDirError("is a file, not a directory; pass --run-dir a directory (it is created when missing)",
                          source=str(directory))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        blocker = next((parent for parent in directory.parents if parent.is_file()), None)
        where = f"{blocker} is a file" if blocker else f"cannot be created ({error.strerror})"
        raise RunDirError(f"cannot be created: {where}, not a directory; pass --run-dir a path outside it",
                          source=str(directory)) from error
    except OSError as error:  # permission denied, read-only file system, ...
        raise RunDirError(f"cannot be created ({error.strerror}); pass --run-dir a directory you can write to",
                          source=str(directory)) from error


def _move_aside(directory: Path, lock: RunDirLock) -> RunDirLock:
    """Rename the run in ``directory`` to a new sibling ``NAME.old-<time>`` (one rename: all of it or nothing)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = directory.with_name(f"{directory.name}.old-{stamp}")
    for number in range(1, 1000):
        if not aside.exists():
            break
        aside = directory.with_name(f"{directory.name}.old-{stamp}-{number}")
    try:
        os.rename(directory, aside)  # the lock goes with it: no other process can start in the old run meanwhile
    except OSError as error:
        lock.release()
        raise RunDirError(f"--overwrite cannot move the run aside to {aside.name} ({error.strerror}); delete it "
                          f"yourself or train into a new --run-dir", source=str(directory)) from error
    lock.path = aside / LOCK_NAME  # where the lock file now is, for its release
    try:
        _make_directory(directory)
        fresh = RunDirLock.acquire(directory)  # a process that started in the new directory meanwhile wins
    finally:
        lock.release()
    print(f"jef: --overwrite: moved the previous run in {directory} aside to {aside}", file=sys.stderr)
    return fresh


@attrs.define(eq=False)
class RunDirLock:
    """An exclusive ``flock`` on ``RUN/.lock``, which holds the owner's pid and host.

    Attributes:
        path: The lock file.
        handle: Its open file descriptor (the lock lives as long as it is open), or None without locking.
    """

    path: Path
    handle: int | None

    @classmethod
    def acquire(cls, directory: Path) -> RunDirLock:
        """Lock ``directory``, taking over a lock whose process is gone.

        Raises:
            RunDirError: Another process holds the lock (named), or the directory cannot be written.
        """
        path = directory / LOCK_NAME
        if fcntl is None:
            return cls(path, None)
        while True:
            try:
                handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every file
            except OSError as error:
                raise RunDirError(f"cannot be written ({error.strerror}: {path}); pass --run-dir a directory you "
                                  f"can write to", source=str(directory)) from error
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(path)
                os.close(handle)
                raise RunDirError(f"another jef process writes this run directory ({holder}, lock {path}); wait "
                                  f"for it to end or stop it, or train into a new --run-dir", source=str(directory))
            except OSError as error:  # a file system without locks (some network mounts)
                os.close(handle)
                warnings.warn(f"{path}: cannot lock the run directory ({error.strerror}); nothing keeps a second "
                              f"jef process from writing it", stacklevel=2)
                return cls(path, None)
            try:
                same = os.stat(path).st_ino == os.fstat(handle).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(handle)  # its holder released it (and removed it) between our open and lock: use the new one
        previous = _holder(path)
        if previous != "pid unknown":  # a lock file whose process is gone (killed): its flock went with it
            print(f"jef: {directory}: taking over the stale lock of {previous} (that process is gone)",
                  file=sys.stderr)
        os.ftruncate(handle, 0)
        os.write(handle, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        return cls(path, handle)

    def release(self) -> None:
        """Remove the lock file and drop the lock (in that order: no one can lock the removed file meanwhile)."""
        if self.handle is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.handle).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.handle)
        self.handle = None


def _holder(path: Path) -> str:
    """``pid N on host H`` from a lock file, or ``pid unknown``."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {int(owner['pid'])} on host {owner['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def _parse(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None
