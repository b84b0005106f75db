"""Report sections (`reporting.html.Section`) as Markdown: the same content as the HTML report.

A section of level 1 is the document's title (`#`), level 2 a section (`##`), level 3 a
subsection (`###`). Within a section: the note (a block quote), paragraphs, tables (pipe tables,
a caption as the paragraph above), figures (image links), then `blocks` in their order.
"""

from __future__ import annotations

from collections.abc import Sequence

from busgen_jax.reporting import html


def _table(table: html.Table) -> list[str]:
    lines = [table.caption, ""] if table.caption else []
    lines.append("| " + " | ".join(map(html.format_value, table.header)) + " |")
    lines.append("|" + "---|" * len(table.header))
    lines += ["| " + " | ".join(map(html.format_value, row)) + " |" for row in table.rows]
    return [*lines, ""]


def _block(block: str | html.Table | html.Figure) -> list[str]:
    if isinstance(block, html.Table):
        return _table(block)
    if isinstance(block, html.Figure):
        return [f"![{block.caption}]({block.path})", ""]
    return [block, ""]


def render(sections: Sequence[html.Section]) -> str:
    """The sections as one Markdown document."""
    lines: list[str] = []
    for section in sections:
        lines += [f"{'#' * section.level} {section.title}", ""]
        if section.note:
            lines += [f"> {section.note}", ""]
        for block in (*section.paragraphs, *section.tables, *section.figures, *section.blocks):
            lines += _block(block)
    return "\n".join(lines)
