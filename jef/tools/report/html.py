"""The report page: one self-contained HTML file.

Images are embedded as base64 PNG data URIs and the style sheet is inline, so
the file can be mailed, attached to an issue or opened offline; nothing is
fetched from the network and no JavaScript runs. Every text that comes from a
run (names, pipeline, plugin metadata) is escaped.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

import attrs

__all__ = ["Section", "columns", "figure", "note", "page", "preformatted", "table"]

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 1rem 2rem 3rem; color: #1b1b1b; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
nav a { margin-right: 1rem; } .meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.8rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9rem; max-width: 60rem; }
pre { background: #f7f7f7; border: 1px solid #e4e4e4; padding: 0.6rem; overflow: auto; max-height: 36rem;
      font-size: 0.82rem; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4rem 0.8rem; margin: 0.6rem 0; }
.columns { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.columns > div { flex: 1 1 24rem; min-width: 0; } .missing { color: #999; }
"""


@attrs.frozen
class Section:
    """A titled part of the page; ``anchor`` is its id, linked from the navigation bar."""

    anchor: str
    title: str
    body: str


def figure(png: bytes, alt: str, caption: str = "") -> str:
    """An ``<img>`` holding ``png`` as a data URI, with a caption saying how to read it."""
    data = base64.b64encode(png).decode("ascii")
    text = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">{text}</figure>'


def note(text: str) -> str:
    """A highlighted remark (what is missing and why)."""
    return f'<p class="note">{escape(text)}</p>'


def paragraph(text: str) -> str:
    """Plain escaped text."""
    return f"<p>{escape(text)}</p>"


def preformatted(text: str) -> str:
    """Text shown as written (a YAML file)."""
    return f"<pre>{escape(text)}</pre>"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[int] = ()) -> str:
    """A table of escaped text; columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{escape(cell)}</td>'
                         for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def columns(parts: Sequence[tuple[str, str]]) -> str:
    """Side-by-side blocks, each ``(heading, html)``; they wrap under each other on narrow screens."""
    inner = "".join(f"<div><h3>{escape(heading)}</h3>{body}</div>" for heading, body in parts)
    return f'<div class="columns">{inner}</div>'


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole HTML document."""
    links = " ".join(f'<a href="#{escape(s.anchor)}">{escape(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{escape(s.anchor)}">\n<h2>{escape(s.title)}</h2>\n{s.body}\n</section>'
                     for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f'<h1>{escape(title)}</h1>\n<p class="meta">{escape(subtitle)}</p>\n<nav>{links}</nav>\n'
            f"{body}\n</body>\n</html>\n")
