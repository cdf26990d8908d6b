"""The report's building blocks (paragraphs, headings, tables) and how values are written in them.

Every value goes through :func:`fmt`: numbers to four significant digits, a dash for what is
missing, and file-system paths as their last component only (a report is read elsewhere, later:
the folder a run was built in, often a temporary one, means nothing there).
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from typing import Any

DASH = "—"


def display(text: str) -> str:
    """A path as its last component (``/tmp/x/heldout.jsonl`` -> ``heldout.jsonl``); other text as is."""
    if os.path.isabs(text) and "\n" not in text:
        return os.path.basename(text.rstrip("/")) or text
    return text


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return DASH if math.isnan(v) else f"{v:.{digits}g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt(x)}" for k, x in v.items()) or DASH
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v) or DASH
    return display(str(v))


def get(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...``, or None where a level is missing or not a dict."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def number(v: Any) -> float:
    """A float, NaN for anything that is not a finite number."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def ppl_ratio(e: Any) -> Any:
    """The perplexity ratio pruned / base of an eval.json (computed when only both values are there)."""
    ratio = get(e, "perplexity", "ratio")
    pruned, base = get(e, "perplexity", "pruned"), get(e, "perplexity", "base")
    if ratio is None and isinstance(pruned, int | float) and isinstance(base, int | float) and base:
        return pruned / base
    return ratio


def data_words(data: Any) -> str:
    """eval.json's ``data`` in words: ``heldout.jsonl: 32,768 tokens in 128 windows of 256``."""
    if not isinstance(data, dict):
        return fmt(data)
    source = fmt(data.get("source"))
    tokens, windows, length = data.get("n_tokens", data.get("tokens")), data.get("n_sequences"), data.get("seq_len")
    text = source
    if isinstance(tokens, int):
        text += f": {tokens:,} tokens"
        if isinstance(windows, int) and isinstance(length, int):
            text += f" in {windows} windows of {length}"
    if data.get("shuffle") is True:
        text += f", documents shuffled (seed {fmt(data.get('seed'))})"
    if data.get("short") is True:
        text += " (the source ran out before the tokens asked for)"
    return text


@dataclass
class Text:
    """A paragraph of the report, or a subsection heading (``heading=True``)."""

    text: str
    heading: bool = False
    lead: bool = False
    """The headline paragraph (set apart on the page)."""

    def html(self) -> str:
        if self.heading:
            return f"<h3>{html.escape(self.text)}</h3>"
        return f'<p class="lead">{html.escape(self.text)}</p>' if self.lead else f"<p>{html.escape(self.text)}</p>"

    def markdown(self) -> str:
        return f"### {self.text}" if self.heading else self.text


@dataclass
class Table:
    """A table; ``collapsed`` ones sit folded under their title in the HTML (the figure above them
    already shows the values), open in the markdown."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    collapsed: bool = False

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        table = f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
        if self.collapsed:
            return f"<details><summary>{html.escape(self.title or 'values')}</summary>{table}{note}</details>"
        head3 = f"<h3>{html.escape(self.title)}</h3>\n" if self.title else ""
        return f"{head3}{table}{note}"

    def markdown(self) -> str:
        def cell(c: str) -> str:
            return c.replace("|", "\\|").replace("\n", " ")

        lines = ([f"### {self.title}", ""] if self.title else []) + ["| " + " | ".join(map(cell, self.header)) + " |"]
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(map(cell, row)) + " |" for row in self.rows]
        return "\n".join(lines + ([f"\n{self.note}"] if self.note else []))
