"""A self-contained HTML report: sections of text, tables and PNG figures (inlined).

The demo builds one from its stages' outputs; `busgen report --workdir=DIR` rebuilds it from a
finished demo workdir (see `busgen_jax.reporting.demo_report`). `reporting.markdown` renders the same
sections as Markdown.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import pathlib
from collections.abc import Sequence
from typing import Any

_STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: .8em 0 1.4em; font-size: 0.9em; display: block;
        overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f1f1f1; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: .5em .8em; }
"""


@dataclasses.dataclass
class Table:
    caption: str
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclasses.dataclass
class Figure:
    path: pathlib.Path
    caption: str


@dataclasses.dataclass
class Section:
    """A heading, then paragraphs, tables and figures; `blocks` adds content in its own order.

    `level` 2 is a section, 3 a subsection; 1 a document's title (Markdown `#`), shown as a
    section in the HTML report.
    """

    title: str
    paragraphs: Sequence[str] = ()
    tables: Sequence[Table] = ()
    figures: Sequence[Figure] = ()
    note: str = ""
    blocks: list[str | Table | Figure] = dataclasses.field(default_factory=list)
    level: int = 2


def _block(block: str | Table | Figure) -> str:
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block)
    return f"<p>{html.escape(block)}</p>"


def format_value(value: Any) -> str:
    """A table cell's text: floats to 3 decimals (or 3 significant digits when smaller)."""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _cell(value: Any) -> str:
    return html.escape(format_value(value))


def _table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table.rows
    )
    return (
        "<table>"
        + (f"<caption>{html.escape(table.caption)}</caption>" if table.caption else "")
        + f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _figure(figure: Figure) -> str:
    if not figure.path.is_file():
        return f"<p class='note'>Missing figure: {html.escape(str(figure.path))}</p>"
    data = base64.b64encode(figure.path.read_bytes()).decode()
    return (
        f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(figure.caption)}'>"
        f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>"
    )


def render(title: str, sections: Sequence[Section], preamble: str = "") -> str:
    """The report as one HTML string with every figure embedded."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if preamble:
        parts.append(f"<p class='note'>{html.escape(preamble)}</p>")
    for section in sections:
        # The report's title is its one <h1>: a document's title section (level 1) becomes a
        # section of the report.
        level = max(section.level, 2)
        parts.append(f"<h{level}>{html.escape(section.title)}</h{level}>")
        if section.note:
            parts.append(f"<p class='note'>{html.escape(section.note)}</p>")
        parts += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
        parts += [_table(t) for t in section.tables]
        parts += [_figure(f) for f in section.figures]
        parts += [_block(b) for b in section.blocks]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    path: str | pathlib.Path, title: str, sections: Sequence[Section], preamble: str = ""
) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(title, sections, preamble))
    return path
