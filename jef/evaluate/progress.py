"""Progress bars of the evaluation protocols, and whether they are shown.

A run decides once (``train.progress``, on the main process only) with :func:`progress_shown`; outside a run
the bars follow tqdm's default of showing on a terminal only, so a script's logs stay clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm

__all__ = ["progress_bar", "progress_shown"]

_SHOWN: ContextVar[bool | None] = ContextVar("jef_evaluation_progress", default=None)


@contextmanager
def progress_shown(shown: bool | None) -> Iterator[None]:
    """Show (True) or hide (False) the evaluation bars inside the block; None: on a terminal only."""
    token = _SHOWN.set(shown)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def progress_bar(total: int, description: str, unit: str) -> tqdm:
    """A bar for ``total`` units of evaluation work, closed by the caller (it is left off the screen when done)."""
    shown = _SHOWN.get()
    return tqdm(total=total, desc=description, unit=unit, leave=False, mininterval=0.5, dynamic_ncols=True,
                disable=None if shown is None else not shown)
