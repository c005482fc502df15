"""Spelling help for names a user or a plugin author writes: the closest valid name to a misspelt one.

The lowest layer of jef's own modules (it imports none of them): the name table, the pipeline validation and the
hook checks all suggest names with it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest"]


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid choice to a misspelt word, or None when none is close (``difflib``, cutoff 0.6)."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None
