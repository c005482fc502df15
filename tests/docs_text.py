"""Reading the code blocks of docs/ and matching documented output against real output.

Shared by tests/test_docs.py (every example of every page) and tests/test_documented_messages.py (the
error messages the pages show).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The lead's tutorial, tested end to end with the ``jef new-plugin`` generator.
NOT_RUN = {"plugins.md"}
READ_ONLY_COMMANDS = {"plugins", "list", "config"}


# -- reading the pages -----------------------------------------------------------------

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
SNIPPET = re.compile(r"""^[ \t]*--8<--[ \t]+["']([^"']+)["'][ \t]*$""", re.MULTILINE)


@dataclass
class Block:
    """One fenced code block of a page."""

    page: str
    lang: str
    title: str | None
    text: str
    line: int
    adjacent: bool  # nothing but blank lines since the previous block

    @property
    def first_line(self) -> str:
        return self.text.lstrip("\n").split("\n", 1)[0].strip()

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}:{self.lang or 'plain'}"


def expand_snippets(text: str) -> str:
    """Replace ``--8<-- "path"`` lines (pymdownx.snippets) with the file, as the site build does."""
    return SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8").rstrip("\n"), text)


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown page, in order, snippets expanded."""
    page = path.relative_to(DOCS).as_posix()
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    i, last_end = 0, None
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match.group("indent"), match.group("fence"), match.group("info").strip()
        start = i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        lang = info.split()[0].lstrip(".").lower() if info else ""
        title = re.search(r"""title=["']([^"']+)["']""", info)
        adjacent = last_end is not None and all(not line.strip() for line in lines[last_end + 1:start])
        blocks.append(Block(page, lang, title.group(1) if title else None, expand_snippets("\n".join(body)),
                            start + 1, adjacent))
        last_end = i
        i += 1
    return blocks


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).as_posix() not in NOT_RUN)


def run_blocks() -> list[tuple[Block, Block | None]]:
    """Each block that is run, with the ``text`` block that shows its output (if any)."""
    out = []
    for path in pages():
        blocks = read_blocks(path)
        for index, block in enumerate(blocks):
            if block.lang in ("text", ""):
                continue
            following = blocks[index + 1] if index + 1 < len(blocks) else None
            expected = following if following and following.lang == "text" and following.adjacent else None
            out.append((block, expected))
    return out


BLOCKS = run_blocks()


def output_pattern(expected: str) -> re.Pattern[str]:
    """``...`` matches anything; runs of whitespace match any whitespace."""
    pieces = []
    for piece in expected.strip().split("..."):
        pieces.append(r"\s+".join(re.escape(word) for word in piece.split()))
        if piece[:1].isspace() and pieces[-1]:
            pieces[-1] = r"\s*" + pieces[-1]
    return re.compile(r"[\s\S]*?".join(pieces))


def assert_output(expected: str, actual: str, what: str) -> None:
    assert output_pattern(expected).search(actual), (
        f"{what}: the documented output does not match the real one.\n--- documented:\n{expected}\n"
        f"--- real:\n{actual}")


def text_blocks(page: str) -> list[str]:
    return [b.text for b in read_blocks(DOCS / page) if b.lang == "text"]


def assert_documented(page: str, key: str, actual: str) -> None:
    """A ``text`` block of ``page`` containing ``key`` shows ``actual`` (with ``...`` for what varies)."""
    shown = [text for text in text_blocks(page) if key in text]
    assert shown, f"docs/{page} no longer shows a message containing {key!r}"
    assert any(output_pattern(text).search(actual) for text in shown), (
        f"docs/{page} shows a message containing {key!r} that differs from the real one:\n"
        f"--- documented:\n" + "\n".join(shown) + f"\n--- real:\n{actual}")
