"""Read pruning runs, measure how they agree, and write the HTML and markdown report.

A run folder holds ``moeprune_plan.json`` (required), ``scores.csv`` (layer, expert, score, ...;
without it the run has no score figure and no Spearman) and optionally ``eval.json``. Any key of
``eval.json`` may be missing; a missing value shows as a dash.

Agreement between two runs, per MoE layer both have: the Jaccard index of their pruned sets, and
the Spearman correlation of their scores, oriented so that higher always means "kept" (scores of a
``higher_pruned`` criterion are negated), so criteria that agree correlate positively.
"""

from __future__ import annotations

import base64
import csv
import html
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import quote

from moeprune.errors import InputError, OutputError
from moeprune.plan import HIGHER_PRUNED, PrunePlan

DASH = "—"


@dataclass
class Run:
    """One pruning run: its folder, a unique display name, the plan, scores and evaluation."""

    path: Path
    name: str
    plan: PrunePlan
    scores: dict[int, list[float]] = field(default_factory=dict)
    eval: dict[str, Any] | None = None

    @property
    def layers(self) -> list[int]:
        return sorted(self.plan.layers)

    def pruned(self) -> dict[int, set[int]]:
        return {i: set(lp.pruned) for i, lp in self.plan.layers.items()}


@dataclass
class Pair:
    """Agreement of runs ``a`` and ``b`` over the MoE layers both have."""

    a: str
    b: str
    layers: list[int]
    jaccard: list[float]
    spearman: list[float]
    random_jaccard: float | None

    @property
    def label(self) -> str:
        return f"{self.a} vs {self.b}"


# --- reading ---------------------------------------------------------------------------------------


def load_run(path: str | os.PathLike[str]) -> Run:
    """The run in folder ``path``; one clear :class:`InputError` when it is not a pruning run."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: no such folder; give folders written by `moeprune prune`")
    plan_file = path / "moeprune_plan.json"
    if not plan_file.is_file():
        raise InputError(f"{path}: no moeprune_plan.json; give folders written by `moeprune prune`")
    plan = PrunePlan.load(plan_file)
    if not plan.layers:
        raise InputError(f"{plan_file}: the plan has no layers")
    scores = _read_scores(path / "scores.csv", plan) if (path / "scores.csv").is_file() else {}
    return Run(path, path.resolve().name or str(path), plan, scores, _read_eval(path / "eval.json"))


def _read_scores(path: Path, plan: PrunePlan) -> dict[int, list[float]]:
    by_layer: dict[int, dict[int, float]] = {}
    try:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                by_layer.setdefault(int(row["layer"]), {})[int(row["expert"])] = float(row["score"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a moeprune scores.csv ({e.__class__.__name__}: {e})") from None
    out: dict[int, list[float]] = {}
    for layer, experts in sorted(by_layer.items()):
        if sorted(experts) != list(range(plan.n_experts)):
            raise InputError(
                f"{path}: layer {layer} has scores for {len(experts)} expert ids, "
                f"the plan beside it has {plan.n_experts} experts"
            )
        out[layer] = [experts[j] for j in range(plan.n_experts)]
    return out


def _read_eval(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a JSON file ({e.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object of evaluation results")
    return data


def _unique_names(runs: list[Run]) -> None:
    """Shortest trailing path parts that tell the runs apart (``aimer``, or ``a/model``, ``b/model``)."""
    parts = [r.path.resolve().parts for r in runs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            break
    seen: dict[str, int] = {}
    for run, name in zip(runs, names, strict=True):
        seen[name] = seen.get(name, 0) + 1
        run.name = name if seen[name] == 1 else f"{name} ({seen[name]})"


# --- agreement -------------------------------------------------------------------------------------


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """|A ∩ B| / |A ∪ B| (1 when both are empty)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def expected_jaccard(n: int, p: int) -> float:
    """Mean Jaccard index of two independent, uniformly random p-subsets of n experts."""
    if p <= 0 or p > n:
        return 1.0 if p == 0 else math.nan
    total = math.comb(n, p)
    return sum(
        math.comb(p, k) * math.comb(n - p, p - k) / total * k / (2 * p - k) for k in range(max(0, 2 * p - n), p + 1)
    )


def rankdata(x: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties given the average of the ranks they span."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ: the Pearson correlation of the average-tie ranks. NaN when undefined (fewer
    than two values, a constant input, or a non-finite value)."""
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} values against {len(b)}")
    if len(a) < 2 or not all(math.isfinite(v) for v in [*a, *b]):
        return math.nan
    ra, rb = rankdata(a), rankdata(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else math.nan


def _keep_value(scores: list[float], direction: str) -> list[float]:
    return [-s for s in scores] if direction == HIGHER_PRUNED else scores


def agreement(runs: list[Run]) -> tuple[list[Pair], list[str]]:
    """Every pair of runs compared layer by layer, and notes on the pairs that cannot be."""
    pairs: list[Pair] = []
    notes: list[str] = []
    for ra, rb in itertools.combinations(runs, 2):
        if ra.plan.n_experts != rb.plan.n_experts:
            notes.append(
                f"{ra.name} and {rb.name} have {ra.plan.n_experts} and {rb.plan.n_experts} experts per layer: "
                "not compared"
            )
            continue
        layers = sorted(set(ra.plan.layers) & set(rb.plan.layers))
        if not layers:
            notes.append(f"{ra.name} and {rb.name} share no MoE layer: not compared")
            continue
        pa, pb = ra.pruned(), rb.pruned()
        rho = [
            spearman(_keep_value(ra.scores[i], ra.plan.direction), _keep_value(rb.scores[i], rb.plan.direction))
            if i in ra.scores and i in rb.scores
            else math.nan
            for i in layers
        ]
        same_p = ra.plan.n_pruned == rb.plan.n_pruned
        base = expected_jaccard(ra.plan.n_experts, ra.plan.n_pruned) if same_p else None
        pairs.append(Pair(ra.name, rb.name, layers, [jaccard(pa[i], pb[i]) for i in layers], rho, base))
    return pairs, notes


# --- formatting ------------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return DASH
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return DASH if math.isnan(v) else f"{v:.{digits}g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()) or DASH
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v) or DASH
    return str(v)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        head3 = f"<h3>{html.escape(self.title)}</h3>\n" if self.title else ""
        return f"{head3}{table}{note}"

    def markdown(self) -> str:
        def cell(c: str) -> str:
            return c.replace("|", "\\|").replace("\n", " ")

        lines = ([f"### {self.title}", ""] if self.title else []) + ["| " + " | ".join(map(cell, self.header)) + " |"]
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(map(cell, row)) + " |" for row in self.rows]
        return "\n".join(lines + ([f"\n{self.note}"] if self.note else []))


def _runs_table(runs: list[Run]) -> Table:
    rows = [
        [
            r.name,
            r.plan.criterion,
            r.plan.direction.replace("_", " "),
            str(r.plan.n_experts),
            str(r.plan.n_pruned),
            f"{r.plan.n_pruned / r.plan.n_experts:.4g}",
            f"{len(r.plan.layers)} ({r.layers[0]}–{r.layers[-1]})",
            "yes" if r.scores else "no",
            "yes" if r.eval is not None else "no",
            str(r.path),
        ]
        for r in runs
    ]
    header = ["run", "criterion", "direction", "experts", "pruned/layer", "ratio", "MoE layers", "scores", "eval"]
    return Table("", [*header, "folder"], rows)


def _eval_tables(runs: list[Run]) -> list[Table]:
    evaluated = [r for r in runs if r.eval is not None]
    if not evaluated:
        return []
    summary = Table(
        "Perplexity and agreement with the base model",
        [
            "run",
            "model",
            "base",
            "data",
            "perplexity (pruned)",
            "perplexity (base)",
            "perplexity ratio",
            "KL mean",
            "top-1 agreement",
        ],
        [
            [
                r.name,
                _fmt(_get(r.eval, "model")),
                _fmt(_get(r.eval, "base")),
                _fmt(_get(r.eval, "data")),
                _fmt(_get(r.eval, "perplexity", "pruned")),
                _fmt(_get(r.eval, "perplexity", "base")),
                _fmt(_get(r.eval, "perplexity", "ratio")),
                _fmt(_get(r.eval, "kl_mean")),
                _fmt(_get(r.eval, "top1_agreement")),
            ]
            for r in evaluated
        ],
        "perplexity ratio: pruned / base (1 = unchanged). KL mean: mean per-token KL divergence between the "
        "base and pruned next-token distributions. top-1 agreement: share of tokens whose most likely next token "
        "is the same in both.",
    )
    rows: list[list[str]] = []
    for r in evaluated:
        tasks = _get(r.eval, "tasks")
        if not isinstance(tasks, dict):
            continue
        for task, t in tasks.items():
            rows.append(
                [
                    r.name,
                    str(task),
                    _fmt(_get(t, "metric")),
                    _fmt(_get(t, "score")),
                    _fmt(_get(t, "base")),
                    _fmt(_get(t, "recovery")),
                ]
            )
    out = [summary]
    if rows:
        header = ["run", "task", "metric", "score (pruned)", "score (base)", "recovery"]
        out.append(Table("Tasks", header, rows, "recovery: the pruned score relative to the base score."))
    return out


def _agreement_table(pairs: list[Pair]) -> Table:
    rows = [
        [
            p.a,
            p.b,
            str(len(p.layers)),
            _fmt(_mean(p.jaccard), 3),
            _fmt(min(p.jaccard), 3),
            _fmt(p.random_jaccard, 3),
            _fmt(_mean(p.spearman), 3),
        ]
        for p in pairs
    ]
    header = ["run A", "run B", "common layers", "mean Jaccard", "min Jaccard", "random Jaccard", "mean Spearman ρ"]
    return Table(
        "",
        header,
        rows,
        "Jaccard: |A ∩ B| / |A ∪ B| of the experts each run pruned in a layer (random: the expectation for two "
        "random selections of the same size). Spearman ρ of the scores, oriented so that higher means kept.",
    )


# --- the report ------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


def build_report(dirs: Sequence[str | os.PathLike[str]], out_html: str | os.PathLike[str]) -> Path:
    """Write ``out_html`` (self-contained) and the markdown summary beside it (same name, ``.md``),
    with the figures as PNG files in ``<stem>_files/``. Returns the HTML path."""
    from moeprune.report import plots

    out_html = Path(out_html)
    if not dirs:
        raise InputError("give at least one run folder")
    if out_html.suffix.lower() == ".md":
        raise InputError(f"{out_html}: give the HTML file name (e.g. report.html); the .md is written beside it")
    runs = [load_run(d) for d in dirs]
    _unique_names(runs)
    plots.require_matplotlib()
    pairs, notes = agreement(runs)

    scores_figs: list[plots.Plot] = []
    map_figs: list[plots.Plot] = []
    for n, r in enumerate(runs, 1):
        slug = f"{n}-{_slug(r.name)}"
        if r.scores:
            scores_figs.append(
                plots.score_plot(
                    f"scores-{slug}", r.name, r.plan.criterion, r.plan.direction, r.layers, r.scores, r.pruned()
                )
            )
        else:
            notes.append(f"{r.name} has no scores.csv: no score figure")
        map_figs.append(plots.map_plot(f"map-{slug}", r.name, r.plan.criterion, r.layers, r.plan.n_experts, r.pruned()))
    agree_figs: list[plots.Plot] = []
    if pairs:
        layers = sorted({i for p in pairs for i in p.layers})
        bases = {p.random_jaccard for p in pairs}
        base = bases.pop() if len(bases) == 1 else None

        def series(values: str) -> dict[str, list[float]]:
            out = {}
            for p in pairs:
                v = dict(zip(p.layers, getattr(p, values), strict=True))
                out[p.label] = [v.get(i, math.nan) for i in layers]
            return out

        agree_figs.append(plots.agreement_plot("agreement-jaccard", "jaccard", layers, series("jaccard"), base))
        if any(math.isfinite(v) for p in pairs for v in p.spearman):
            agree_figs.append(plots.agreement_plot("agreement-spearman", "spearman", layers, series("spearman")))
        else:
            notes.append("no pair of runs has scores for a common layer: no Spearman figure")

    sections: list[tuple[str, list[Table], list[plots.Plot]]] = [("Runs", [_runs_table(runs)], [])]
    evals = _eval_tables(runs)
    if evals:
        sections.append(("Evaluation", evals, []))
    if pairs:
        sections.append(("Agreement between runs", [_agreement_table(pairs)], agree_figs))
    sections.append(("Scores per layer", [], scores_figs))
    sections.append(("Kept and pruned experts", [], map_figs))

    files = out_html.parent / f"{out_html.stem}_files"
    try:
        files.mkdir(parents=True, exist_ok=True)
        for old in files.glob("*.png"):
            if old.name.startswith(("scores-", "map-", "agreement-")):
                old.unlink()
        for fig in scores_figs + map_figs + agree_figs:
            (files / f"{fig.name}.png").write_bytes(fig.png)
        _write(out_html, _html(runs, sections, notes))
        _write(out_html.with_suffix(".md"), _markdown(runs, sections, notes, files.name))
    except OSError as e:
        raise OutputError(f"cannot write the report to {out_html.parent}: {e.strerror or e}") from None
    return out_html


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _version() -> str:
    try:
        return version("moeprune")
    except PackageNotFoundError:
        return "unknown"


def _subtitle(runs: list[Run]) -> str:
    names = ", ".join(r.name for r in runs)
    return f"{len(runs)} pruning run{'s' if len(runs) > 1 else ''}: {names}. moeprune {_version()}."


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1400px;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}tbody tr:nth-child(even){background:#fafafa}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}.note{font-size:.88em;color:#555}
"""


def _html(runs: list[Run], sections: list[tuple[str, list[Table], list[Any]]], notes: list[str]) -> str:
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>moeprune report: {html.escape(', '.join(r.name for r in runs))}</title>",
        f"<style>{CSS}</style>\n</head>\n<body>",
        "<h1>moeprune report</h1>",
        f"<p>{html.escape(_subtitle(runs))}</p>",
    ]
    for title, tables, figs in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts += [t.html() for t in tables]
        for fig in figs:
            data = base64.b64encode(fig.png).decode("ascii")
            alt = html.escape(fig.title, quote=True)
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                f"<figcaption>{html.escape(fig.title)}</figcaption></figure>"
            )
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _markdown(runs: list[Run], sections: list[tuple[str, list[Table], list[Any]]], notes: list[str], files: str) -> str:
    parts = ["# moeprune report", "", _subtitle(runs)]
    for title, tables, figs in sections:
        parts += ["", f"## {title}"]
        parts += ["\n" + t.markdown() for t in tables]
        parts += [f"\n![{fig.title}]({quote(files)}/{quote(fig.name)}.png)" for fig in figs]
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"
