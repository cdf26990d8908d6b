"""Writing the report's sections as one self-contained HTML page and as markdown.

The HTML embeds every figure as a base64 PNG (no external URL, no file reference) and lays
consecutive figures out in a grid that becomes one column on a narrow screen; tables scroll
sideways rather than widen the page. Figures carry their title in the image (wrapped to fit) and
as the image's text alternative, not again as a caption. The markdown links the PNG files written
in ``<name>_files/``.
"""

from __future__ import annotations

import base64
import html
from typing import Any
from urllib.parse import quote

from moeprune.report.blocks import Table, Text
from moeprune.version import __version__

Section = tuple[str, list[Any]]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1400px;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em;overflow-wrap:anywhere}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}tbody tr:nth-child(even){background:#fafafa}
.scroll{overflow-x:auto;max-width:100%}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,560px),1fr));gap:1em;align-items:start}
.figs figure{margin:0}
.note{font-size:.88em;color:#555}
.lead{font-size:1.08em;background:#f4f7fb;border-left:4px solid #0072B2;padding:.7em 1em}
details{margin:.6em 0}summary{cursor:pointer;color:#333}
@media (max-width:640px){body{margin:1em auto;padding:0 .6em}h1{font-size:1.35em}table{font-size:.85em}}
"""


def package_version() -> str:
    return __version__


def _figure(block: Any) -> str:
    data = base64.b64encode(block.png).decode("ascii")
    alt = html.escape(block.alt or block.title, quote=True)
    name = html.escape(block.title, quote=True)
    return (
        f'<figure id="{block.name}"><img src="data:image/png;base64,{data}" alt="{alt}" data-title="{name}"></figure>'
    )


def to_html(heading: str, subtitle: str, sections: list[Section], notes: list[str]) -> str:
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(heading)}</title>",
        f"<style>{CSS}</style>\n</head>\n<body>",
        f"<h1>{html.escape(heading)}</h1>",
        f'<p class="note">{html.escape(subtitle)}</p>',
    ]
    for title, blocks in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        k = 0
        while k < len(blocks):
            if isinstance(blocks[k], Text | Table):
                parts.append(blocks[k].html())
                k += 1
                continue
            end = k
            while end < len(blocks) and not isinstance(blocks[end], Text | Table):
                end += 1
            figs = "".join(_figure(b) for b in blocks[k:end])
            parts.append(f'<div class="figs">{figs}</div>' if end - k > 1 else figs)
            k = end
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def to_markdown(heading: str, subtitle: str, sections: list[Section], notes: list[str], files: str) -> str:
    parts = [f"# {heading}", "", subtitle]
    for title, blocks in sections:
        parts += ["", f"## {title}"]
        for block in blocks:
            if isinstance(block, Text | Table):
                parts.append("\n" + block.markdown())
            else:
                parts.append(f"\n![{block.title}]({quote(files)}/{quote(block.name)}.png)")
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"
