"""The report as one self-contained HTML page: escaped tables, PNG plots embedded as base64 (the files stay
beside it too)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pandas as pd

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.note{color:#555}.gap{color:#b00}
img{max-width:100%;display:block;margin:.5em 0 1.5em}
"""


@dataclass
class Section:
    """One part of the report: an id (the page anchor), a title, text, tables and plots."""

    id: str
    title: str
    text: str = ""
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    gap: str = ""  # why the section could not be computed, if it could not


def table(frame: pd.DataFrame) -> str:
    """An escaped HTML table; floats with 4 decimals, missing values as a dash."""
    return frame.to_html(index=False, escape=True, border=0, na_rep="-", float_format=lambda v: f"{v:.4f}")


def image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{escape(path.name)}" title="{escape(path.name)}">'


def section(s: Section) -> str:
    out = [f'<section id="{escape(s.id)}">', f"<h2>{escape(s.title)}</h2>"]
    if s.gap:
        out.append(f'<p class="gap">Not available: {escape(s.gap)}</p>')
    if s.text:
        out.append(f'<p class="note">{escape(s.text)}</p>')
    for caption, frame in s.tables:
        out += [f"<h3>{escape(caption)}</h3>" if caption else "", table(frame)]
    out += [image(p) for p in s.images]
    out.append("</section>")
    return "\n".join(o for o in out if o)


def render(title: str, context: dict[str, object], sections: list[Section]) -> str:
    """The page: the title, the context (period, sources, reference) as a key/value table, a table of contents
    and every section."""
    ctx = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in context.items())
    toc = "".join(f'<li><a href="#{escape(s.id)}">{escape(s.title)}</a></li>' for s in sections)
    body = "\n".join(section(s) for s in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body><h1>{escape(title)}</h1>\n<table>{ctx}</table>\n<ul>{toc}</ul>\n"
        f"{body}\n</body></html>\n"
    )
