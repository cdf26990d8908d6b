"""``moeprune report``: read the runs (and the STATS folder, if given), assemble the sections in
reading order, and write the HTML page, the markdown summary and the PNG figures.

Order: the answer first (which criterion lost least per plan size, with margins, its stability
and the selection principle's recommendation), then selection stability, evaluation, agreement
between runs, scores per layer, kept and pruned experts, and the table of runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from moeprune.errors import InputError, OutputError
from moeprune.report import figures, headline, plots, render, stability, tables
from moeprune.report.runs import load_runs


def build_report(
    dirs: Sequence[str | os.PathLike[str]],
    out_html: str | os.PathLike[str],
    *,
    stats: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``out_html`` (self-contained) and the markdown summary beside it (same name, ``.md``),
    with the figures as PNG files in ``<stem>_files/``. ``stats``: the STATS folder the runs were
    scored from, for the selection-stability section. Returns the HTML path."""
    out_html = Path(out_html)
    if not dirs:
        raise InputError("give at least one run folder")
    if out_html.suffix.lower() == ".md":
        raise InputError(f"{out_html}: give the HTML file name (e.g. report.html); the .md is written beside it")
    notes: list[str] = []
    runs = load_runs(list(dirs), notes)
    routing = stability.load_stats(stats, runs) if stats is not None else None
    plots.require_matplotlib()
    stab = stability.measure(runs, routing)

    summary = headline.headline(runs, stab, None if routing is None else routing.meta.get("model"))
    summary.append(headline.recommendation(runs, routing is not None))
    sections: list[render.Section] = [("Which criterion lost least", summary)]
    if routing is not None and (blocks := stability.section(runs, routing, stab, notes)):
        sections.append(("Selection stability", blocks))
    evals = tables.eval_tables(runs)
    if evals:
        sections.append(("Evaluation", [*evals, *figures.eval_figure(runs)]))
    if agree := figures.agreement_section(runs, notes):
        sections.append(("Agreement between runs", agree))
    if scores := figures.score_figures(runs, notes):
        sections.append(("Scores per layer", scores))
    sections.append(("Kept and pruned experts", figures.map_figures(runs)))
    sections.append(("Runs", [tables.runs_table(runs)]))
    figs = [b for _, blocks in sections for b in blocks if isinstance(b, plots.Plot)]

    heading = f"moeprune report: {headline.model_line(runs)}"
    subtitle = f"{len(runs)} pruning run{'s' if len(runs) > 1 else ''}. moeprune {render.package_version()}."
    files = out_html.parent / f"{out_html.stem}_files"
    try:
        files.mkdir(parents=True, exist_ok=True)
        for old in files.glob("*.png"):
            if old.name.startswith(("scores-", "map-", "agreement-", "eval-", "stability-")):
                old.unlink()
        for fig in figs:
            (files / f"{fig.name}.png").write_bytes(fig.png)
        _write(out_html, render.to_html(heading, subtitle, sections, notes))
        _write(out_html.with_suffix(".md"), render.to_markdown(heading, subtitle, sections, notes, files.name))
    except OSError as e:
        raise OutputError(f"cannot write the report to {out_html.parent}: {e.strerror or e}") from None
    return out_html


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
