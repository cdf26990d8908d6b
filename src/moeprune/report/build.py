"""Read pruning runs, measure how they agree, and write the HTML and markdown report.

A run folder holds ``moeprune_plan.json`` (required), ``scores.csv`` (layer, expert, score, ...;
without it the run has no score figure and no Spearman) and optionally ``eval.json``. Any key of
``eval.json`` may be missing; a missing value shows as a dash.

Runs are ordered by plan size (experts per layer, then experts pruned per layer), then by criterion
in the order the criteria first appear, then as given.

Agreement is measured only between runs of the same plan size (the same number of experts pruned
per layer out of the same number), per MoE layer both have: the Jaccard index of their pruned sets,
and the Spearman correlation of their scores, oriented so that higher always means "kept" (scores
of a ``higher_pruned`` criterion are negated), so criteria that agree correlate positively. A group
of at most :data:`~moeprune.report.plots.MAX_LINES` pairs is drawn per layer, a line per pair, with
a table of the pairs; a larger group as one runs x runs matrix of the means over layers (Jaccard
below the diagonal, Spearman above), which also replaces the pair table.

Runs whose scores are identical (one criterion at several ratios) share one score figure; more
than :data:`FEW_RUNS` runs share one grid of small kept/pruned maps.
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

import numpy as np

from moeprune.errors import InputError, OutputError
from moeprune.plan import HIGHER_PRUNED, PrunePlan

DASH = "—"
FEW_RUNS = 3
"""Up to this many runs: a kept/pruned map each and no evaluation dot plot; more: one grid of small
maps, and a dot plot of the evaluation by criterion and plan size."""
MAX_SEPARATE_TASK_ROWS = 3
"""Up to this many evaluated runs, the task table has a row per (run, task); more: a row per run."""


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

    @property
    def size(self) -> tuple[int, int]:
        """The plan size: (experts per layer, experts pruned per layer)."""
        return self.plan.n_experts, self.plan.n_pruned

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


def size_label(size: tuple[int, int]) -> str:
    """``4 of 16 experts pruned per layer`` for the plan size (16, 4)."""
    n_experts, n_pruned = size
    return f"{n_pruned} of {n_experts} experts pruned per layer"


@dataclass
class Group:
    """The runs of one plan size and the agreement of every pair of them."""

    size: tuple[int, int]
    runs: list[Run]
    pairs: list[Pair] = field(default_factory=list)

    @property
    def label(self) -> str:
        return size_label(self.size)

    @property
    def slug(self) -> str:
        return f"{self.size[1]}of{self.size[0]}"


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


def sort_runs(runs: list[Run]) -> list[Run]:
    """By plan size, then criterion (in order of first appearance), then as given."""
    first: dict[str, int] = {}
    for r in runs:
        first.setdefault(r.plan.criterion, len(first))
    order = sorted(range(len(runs)), key=lambda k: (runs[k].size, first[runs[k].plan.criterion], k))
    return [runs[k] for k in order]


def plan_groups(runs: list[Run]) -> list[Group]:
    """The runs by plan size, smallest first, each group in the order given."""
    by: dict[tuple[int, int], list[Run]] = {}
    for r in runs:
        by.setdefault(r.size, []).append(r)
    return [Group(size, members) for size, members in sorted(by.items())]


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
    """Every pair of runs of the same plan size compared layer by layer, and notes on the pairs
    that cannot be. Runs of different plan sizes are not paired: the Jaccard index of two sets of
    different sizes cannot reach 1, and mostly measures the difference in size."""
    pairs: list[Pair] = []
    notes: list[str] = []
    for group in plan_groups(runs):
        base = expected_jaccard(*group.size)
        for ra, rb in itertools.combinations(group.runs, 2):
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
            pairs.append(Pair(ra.name, rb.name, layers, [jaccard(pa[i], pb[i]) for i in layers], rho, base))
    return pairs, notes


def agreement_matrix(group: Group) -> tuple[list[list[float]], list[list[float]]]:
    """(Jaccard, Spearman): ``[i][j]`` is the mean over common layers for runs ``group.runs[i]``
    and ``[j]`` (symmetric; NaN on the diagonal and for pairs not compared)."""
    index = {r.name: k for k, r in enumerate(group.runs)}
    n = len(group.runs)
    jac = [[math.nan] * n for _ in range(n)]
    rho = [[math.nan] * n for _ in range(n)]
    for p in group.pairs:
        a, b = index[p.a], index[p.b]
        jac[a][b] = jac[b][a] = _mean(p.jaccard)
        rho[a][b] = rho[b][a] = _mean(p.spearman)
    return jac, rho


def score_groups(runs: list[Run]) -> list[list[Run]]:
    """The runs with a scores.csv, those with identical scores (same criterion, direction and
    values) together, in order of first appearance."""
    by: dict[Any, list[Run]] = {}
    for r in runs:
        if r.scores:
            values = tuple((i, tuple(None if math.isnan(v) else v for v in s)) for i, s in sorted(r.scores.items()))
            by.setdefault((r.plan.criterion, r.plan.direction, values), []).append(r)
    return list(by.values())


def criterion_grid(runs: list[Run]) -> tuple[list[str], list[tuple[int, int]], dict[Any, Run]] | None:
    """(criteria, plan sizes, {(criterion, size): run}) when no two runs share both a criterion and
    a plan size, so the runs fit a criterion x plan size table; else None."""
    cells: dict[Any, Run] = {}
    for r in runs:
        key = (r.plan.criterion, r.size)
        if key in cells:
            return None
        cells[key] = r
    criteria = list(dict.fromkeys(r.plan.criterion for r in runs))
    return criteria, sorted({r.size for r in runs}), cells


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
class Text:
    """A paragraph of the report, or a subsection heading (``heading=True``)."""

    text: str
    heading: bool = False

    def html(self) -> str:
        return f"<h3>{html.escape(self.text)}</h3>" if self.heading else f"<p>{html.escape(self.text)}</p>"

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
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
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


def _ppl_ratio(e: Any) -> Any:
    ratio = _get(e, "perplexity", "ratio")
    pruned, base = _get(e, "perplexity", "pruned"), _get(e, "perplexity", "base")
    if ratio is None and isinstance(pruned, int | float) and isinstance(base, int | float) and base:
        return pruned / base
    return ratio


def _eval_tables(runs: list[Run]) -> list[Table]:
    """The perplexity table (every run, dashes for the runs without eval.json) and the task table."""
    evaluated = [r for r in runs if r.eval is not None]
    if not evaluated:
        return []
    shared: list[str] = []
    columns: list[tuple[str, str]] = []  # (header, eval.json key) of what differs between runs
    for key in ("model", "base", "data"):
        values = {_fmt(_get(r.eval, key)) for r in evaluated}
        if len(values) == 1:
            if (value := values.pop()) != DASH:
                shared.append(f"{key}: {value}")
        elif key != "model":  # the evaluated model is the run's own checkpoint: the run column names it
            columns.append((key, key))
    rows = [
        [
            r.name,
            r.plan.criterion,
            f"{r.plan.n_pruned} of {r.plan.n_experts}",
            _fmt(_get(r.eval, "perplexity", "pruned")),
            _fmt(_get(r.eval, "perplexity", "base")),
            _fmt(_get(r.eval, "perplexity", "ratio")),
            _fmt(_get(r.eval, "kl_mean")),
            _fmt(_get(r.eval, "top1_agreement")),
            *[_fmt(_get(r.eval, key)) for _, key in columns],
        ]
        for r in runs
    ]
    note = (
        "pruned: experts pruned per layer. perplexity ratio: pruned / base (1 = unchanged). KL mean: mean "
        "per-token KL divergence between the base and pruned next-token distributions. top-1 agreement: share of "
        "tokens whose most likely next token is the same in both."
    )
    if shared:
        note += f" {'Every evaluated run' if len(evaluated) > 1 else 'Evaluated'}: {'; '.join(shared)}."
    missing = [r.name for r in runs if r.eval is None]
    if missing:
        note += f" Not evaluated (no eval.json): {', '.join(missing)}."
    header = ["run", "criterion", "pruned", "perplexity (pruned)", "perplexity (base)", "perplexity ratio"]
    header += ["KL mean", "top-1 agreement", *[h for h, _ in columns]]
    out = [Table("Perplexity and agreement with the base model", header, rows, note)]
    with_tasks = [r for r in evaluated if isinstance(_get(r.eval, "tasks"), dict) and _get(r.eval, "tasks")]
    if with_tasks:
        out.append(_task_table(with_tasks) if len(with_tasks) <= MAX_SEPARATE_TASK_ROWS else _task_matrix(with_tasks))
    return out


def _task_table(runs: list[Run]) -> Table:
    rows = [
        [
            r.name,
            str(task),
            _fmt(_get(t, "metric")),
            _fmt(_get(t, "score")),
            _fmt(_get(t, "base")),
            _fmt(_get(t, "recovery")),
        ]
        for r in runs
        for task, t in _get(r.eval, "tasks").items()
    ]
    header = ["run", "task", "metric", "score (pruned)", "score (base)", "recovery"]
    return Table("Tasks", header, rows, "recovery: the pruned score relative to the base score.")


def _task_matrix(runs: list[Run]) -> Table:
    """A row per run, a column per task: the score and, in brackets, the recovery; the base model's
    scores on the first row where every run reports the same."""
    tasks: dict[str, str] = {}  # task -> metric
    bases: dict[str, set[str]] = {}
    for r in runs:
        for task, t in _get(r.eval, "tasks").items():
            if tasks.get(str(task)) in (None, DASH):
                tasks[str(task)] = _fmt(_get(t, "metric"))
            bases.setdefault(str(task), set()).add(_fmt(_get(t, "base")))

    def cell(t: Any) -> str:
        score, recovery = _fmt(_get(t, "score")), _get(t, "recovery")
        if isinstance(recovery, int | float) and math.isfinite(recovery):
            return f"{score} ({recovery:.0%})"
        return score

    header = ["run", "criterion", "pruned", *[t if m == DASH else f"{t} ({m})" for t, m in tasks.items()]]
    header.append("mean recovery")
    rows = [["base model", DASH, "0", *[b.pop() if len(b) == 1 else DASH for b in map(set, bases.values())], DASH]]
    for r in runs:
        ts = _get(r.eval, "tasks")
        recoveries = [_get(ts, t, "recovery") for t in tasks]
        finite = [v for v in recoveries if isinstance(v, int | float) and math.isfinite(v)]
        mean = f"{sum(finite) / len(finite):.0%}" if finite else DASH
        rows.append([r.name, r.plan.criterion, f"{r.plan.n_pruned} of {r.plan.n_experts}"])
        rows[-1] += [cell(ts[t]) if t in ts else DASH for t in tasks] + [mean]
    return Table(
        "Tasks",
        header,
        rows,
        "Each cell: the pruned model's score and, in brackets, its recovery (pruned / base score). The first row "
        "holds the base model's scores (a dash where the runs report different ones or none).",
    )


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


def _cell(v: float) -> str:
    return DASH if math.isnan(v) else f"{v:.3f}"


def _matrix_table(group: Group) -> Table:
    jac, rho = agreement_matrix(group)
    n = len(group.runs)
    rows = [
        [f"{i + 1}. {r.name}", *["" if i == j else _cell(jac[i][j] if i > j else rho[i][j]) for j in range(n)]]
        for i, r in enumerate(group.runs)
    ]
    return Table(
        f"Values: {group.label}",
        ["run", *[str(j + 1) for j in range(n)]],
        rows,
        "Columns are numbered as the rows. Below the diagonal: the mean over the common MoE layers of the Jaccard "
        f"index |A ∩ B| / |A ∪ B| of the pruned experts (random selections: {_fmt(expected_jaccard(*group.size), 3)}). "
        "Above the diagonal: the mean Spearman ρ of the scores, oriented so that higher means kept (a dash: no "
        "scores).",
        collapsed=True,
    )


def _extremes(group: Group) -> str:
    """One sentence naming the most and the least alike pairs of a big group."""
    scored = sorted(((_mean(p.jaccard), p) for p in group.pairs if math.isfinite(_mean(p.jaccard))), key=lambda x: x[0])
    if len(scored) < 2:
        return ""
    (lo, a), (hi, b) = scored[0], scored[-1]
    return (
        f"Most alike: {b.a} and {b.b} (mean Jaccard {hi:.3f}); least alike: {a.a} and {a.b} ({lo:.3f}); "
        f"random selections: {expected_jaccard(*group.size):.3f}."
    )


# --- the report ------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


Block = Any  # Text | Table | plots.Plot
Section = tuple[str, list[Block]]


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
    runs = sort_runs(runs)
    plots.require_matplotlib()
    notes: list[str] = []

    sections: list[Section] = [("Runs", [_runs_table(runs)])]
    evals = _eval_tables(runs)
    if evals:
        sections.append(("Evaluation", [*evals, *_eval_figure(runs)]))
    agree = _agreement_section(runs, notes)
    if agree:
        sections.append(("Agreement between runs", agree))
    sections.append(("Scores per layer", _score_figures(runs, notes)))
    sections.append(("Kept and pruned experts", _map_figures(runs)))
    figs = [b for _, blocks in sections for b in blocks if isinstance(b, plots.Plot)]

    files = out_html.parent / f"{out_html.stem}_files"
    try:
        files.mkdir(parents=True, exist_ok=True)
        for old in files.glob("*.png"):
            if old.name.startswith(("scores-", "map-", "agreement-", "eval-")):
                old.unlink()
        for fig in figs:
            (files / f"{fig.name}.png").write_bytes(fig.png)
        _write(out_html, _html(runs, sections, notes))
        _write(out_html.with_suffix(".md"), _markdown(runs, sections, notes, files.name))
    except OSError as e:
        raise OutputError(f"cannot write the report to {out_html.parent}: {e.strerror or e}") from None
    return out_html


def _eval_figure(runs: list[Run]) -> list[Block]:
    """For more than :data:`FEW_RUNS` evaluated runs: perplexity ratio, KL and top-1
    agreement as dot plots, a row per criterion (or per run) and a marker per plan size."""
    from moeprune.report import plots

    evaluated = [r for r in runs if r.eval is not None]
    if len(evaluated) <= FEW_RUNS:
        return []
    grid = criterion_grid(evaluated)
    sizes = sorted({r.size for r in evaluated})
    rows = grid[0] if grid else [r.name for r in evaluated]
    series: dict[str, dict[str, list[float]]] = {}
    for size in sizes:
        values: dict[str, list[float]] = {m: [math.nan] * len(rows) for m in plots.EVAL_METRICS}
        for r in evaluated:
            if r.size != size:
                continue
            k = rows.index(r.plan.criterion if grid else r.name)
            for metric, v in (("ppl_ratio", _ppl_ratio(r.eval)), ("kl", _get(r.eval, "kl_mean"))):
                values[metric][k] = float(v) if isinstance(v, int | float) else math.nan
            top1 = _get(r.eval, "top1_agreement")
            values["top1"][k] = float(top1) if isinstance(top1, int | float) else math.nan
        series[size_label(size)] = values
    if not any(math.isfinite(v) for vs in series.values() for m in vs.values() for v in m):
        return []
    title = "Evaluation by criterion" if grid else "Evaluation by run"
    return [plots.eval_plot("eval-summary", f"{title} and plan size", rows, series)]


def _agreement_section(runs: list[Run], notes: list[str]) -> list[Block]:
    """Per plan size with two runs or more: the pair table and per-layer lines, or for a big group
    the runs x runs matrix and its values."""
    from moeprune.report import plots

    if len(runs) < 2:
        return []
    pairs, pair_notes = agreement(runs)
    notes += pair_notes
    groups = plan_groups(runs)
    for g in groups:
        names = {r.name for r in g.runs}
        g.pairs = [p for p in pairs if p.a in names]
    compared = [g for g in groups if g.pairs]
    if not compared:
        if all(len(g.runs) == 1 for g in groups):
            notes.append("no two runs prune the same number of experts per layer: no agreement to show")
        return []
    blocks: list[Block] = []
    if len(groups) > 1:
        text = (
            "Runs are compared only with runs that prune as many experts per layer (the Jaccard index of two "
            "sets of different sizes cannot reach 1, and mostly measures the difference in size)."
        )
        alone = [f"{g.runs[0].name} ({g.label})" for g in groups if len(g.runs) == 1]
        if alone:
            text += f" Not compared, no other run of their plan size: {', '.join(alone)}."
        blocks.append(Text(text))
    for g in compared:
        blocks.append(Text(f"{g.label[0].upper()}{g.label[1:]}: {len(g.runs)} runs", heading=True))
        if len(g.pairs) <= plots.MAX_LINES:
            blocks += _agreement_lines(g, len(compared) > 1, notes)
            continue
        jac, rho = agreement_matrix(g)
        if extremes := _extremes(g):
            blocks.append(Text(extremes))
        blocks.append(
            plots.matrix_plot(
                f"agreement-{g.slug}-matrix",
                f"Agreement between runs, {g.label}",
                [r.name for r in g.runs],
                np.array(jac),
                np.array(rho),
                "mean Jaccard index of pruned sets",
                "mean Spearman ρ of scores",
                expected_jaccard(*g.size),
            )
        )
        blocks.append(_matrix_table(g))
        if all(math.isnan(v) for p in g.pairs for v in p.spearman):
            notes.append(f"no two runs with {g.label} have scores for a common layer: no Spearman values")
    return blocks


def _agreement_lines(group: Group, suffix: bool, notes: list[str]) -> list[Block]:
    from moeprune.report import plots

    pairs = group.pairs
    layers = sorted({i for p in pairs for i in p.layers})
    end = group.label if suffix else ""

    def series(values: str) -> dict[str, list[float]]:
        out = {}
        for p in pairs:
            v = dict(zip(p.layers, getattr(p, values), strict=True))
            out[p.label] = [v.get(i, math.nan) for i in layers]
        return out

    base = expected_jaccard(*group.size)
    blocks: list[Block] = [_agreement_table(pairs)]
    blocks.append(
        plots.agreement_plot(f"agreement-{group.slug}-jaccard", "jaccard", layers, series("jaccard"), base, end)
    )
    if any(math.isfinite(v) for p in pairs for v in p.spearman):
        blocks.append(
            plots.agreement_plot(f"agreement-{group.slug}-spearman", "spearman", layers, series("spearman"), None, end)
        )
    else:
        notes.append(f"no two runs with {group.label} have scores for a common layer: no Spearman figure")
    return blocks


def _score_figures(runs: list[Run], notes: list[str]) -> list[Block]:
    """One figure per distinct set of scores, shared by the runs that have them."""
    from moeprune.report import plots

    figs: list[Block] = []
    for members in score_groups(runs):
        first = members[0]
        n = runs.index(first) + 1
        slug = f"{n}-{_slug(first.name if len(members) == 1 else first.plan.criterion)}"
        layers = sorted({i for r in members for i in r.layers})
        figs.append(
            plots.score_plot(
                f"scores-{slug}",
                [r.name for r in members],
                first.plan.criterion,
                first.plan.direction,
                layers,
                first.scores,
                [r.pruned() for r in members],
            )
        )
    missing = [r.name for r in runs if not r.scores]
    if missing:
        has = "has" if len(missing) == 1 else "have"
        notes.append(f"{', '.join(missing)} {has} no scores.csv: no score figure")
    return figs


def _map_figures(runs: list[Run]) -> list[Block]:
    """A map per run for a few runs; one grid of small maps for more: criterion x plan size when
    the runs fit that table and have two to four plan sizes, else in order, at most four to a row,
    each plan size starting a row."""
    from moeprune.report import plots

    if len(runs) <= FEW_RUNS:
        return [
            plots.map_plot(f"map-{n}-{_slug(r.name)}", r.name, r.plan.criterion, r.layers, r.plan.n_experts, r.pruned())
            for n, r in enumerate(runs, 1)
        ]

    def panel(r: Run | None) -> plots.MapPanel | None:
        return None if r is None else plots.MapPanel(r.name, r.layers, r.plan.n_experts, r.pruned())

    grid = criterion_grid(runs)
    if grid and 2 <= len(grid[1]) <= 4:
        criteria, sizes, cells = grid
        rows = [[panel(cells.get((c, size))) for size in sizes] for c in criteria]
        columns = [f"{z[1]} of {z[0]} pruned per layer" for z in sizes]
        return [plots.map_grid_plot("map-all", f"Kept and pruned experts: {len(runs)} runs", rows, columns)]
    groups = plan_groups(runs)
    width = min(4, max(len(g.runs) for g in groups))
    rows = []
    for g in groups:  # a plan size starts a row
        members = [panel(r) for r in g.runs]
        if len(groups) > 1:
            for p in members:
                if p is not None:
                    p.label += f" ({g.size[1]} of {g.size[0]})"
        rows += [members[k : k + width] for k in range(0, len(members), width)]
    return [plots.map_grid_plot("map-all", f"Kept and pruned experts: {len(runs)} runs", rows)]


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


def _title(runs: list[Run]) -> str:
    return ", ".join(r.name for r in runs) if len(runs) <= FEW_RUNS else f"{len(runs)} runs"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1400px;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}tbody tr:nth-child(even){background:#fafafa}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}.note{font-size:.88em;color:#555}
details{margin:.6em 0}summary{cursor:pointer;color:#333}
"""


def _html(runs: list[Run], sections: list[Section], notes: list[str]) -> str:
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>moeprune report: {html.escape(_title(runs))}</title>",
        f"<style>{CSS}</style>\n</head>\n<body>",
        "<h1>moeprune report</h1>",
        f"<p>{html.escape(_subtitle(runs))}</p>",
    ]
    for title, blocks in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for block in blocks:
            if isinstance(block, Text | Table):
                parts.append(block.html())
                continue
            data = base64.b64encode(block.png).decode("ascii")
            alt = html.escape(block.alt or block.title, quote=True)
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                f"<figcaption>{html.escape(block.title)}</figcaption></figure>"
            )
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _markdown(runs: list[Run], sections: list[Section], notes: list[str], files: str) -> str:
    parts = ["# moeprune report", "", _subtitle(runs)]
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
