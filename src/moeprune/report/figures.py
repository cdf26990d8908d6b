"""Which figures the report draws for its runs, and the blocks around them.

Agreement, for runs of the same plan size: a group of at most
:data:`~moeprune.report.plots.MAX_LINES` pairs is drawn per layer, a line per pair, with a table of
the pairs; a larger group as one runs x runs matrix of the means over layers (Jaccard below the
diagonal, Spearman above), which also replaces the pair table. Spearman correlations of scores do
not depend on the plan size: a later matrix with the same values leaves its upper half out and
says so. Runs whose scores are identical (one criterion at several ratios) share one score figure;
more than :data:`FEW_RUNS` runs share one grid of small kept/pruned maps, and their evaluation
is drawn as a dot plot by criterion and plan size.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from moeprune.report import plots, plots_compare, plots_maps
from moeprune.report.agreement import agreement, agreement_matrix, criterion_grid, expected_jaccard, score_groups
from moeprune.report.blocks import Text, get, number, ppl_ratio
from moeprune.report.runs import Group, Run, plan_groups, size_label
from moeprune.report.tables import agreement_table, extremes, matrix_table

FEW_RUNS = 3
"""Up to this many runs: a kept/pruned map each and no evaluation dot plot; more: one grid of small
maps, and a dot plot of the evaluation by criterion and plan size."""

Block = Any  # blocks.Text | blocks.Table | plots.Plot


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


def eval_figure(runs: list[Run]) -> list[Block]:
    """For more than :data:`FEW_RUNS` evaluated runs: perplexity ratio, KL and top-1 agreement as
    dot plots, a row per criterion (or per run) and a marker per plan size."""
    evaluated = [r for r in runs if r.eval is not None]
    if len(evaluated) <= FEW_RUNS:
        return []
    grid = criterion_grid(evaluated)
    sizes = sorted({r.size for r in evaluated})
    rows = grid[0] if grid else [r.name for r in evaluated]
    series: dict[str, dict[str, list[float]]] = {}
    for size in sizes:
        values: dict[str, list[float]] = {m: [math.nan] * len(rows) for m in plots_compare.EVAL_METRICS}
        for r in evaluated:
            if r.size == size:
                k = rows.index(r.plan.criterion if grid else r.name)
                values["ppl_ratio"][k] = number(ppl_ratio(r.eval))
                values["kl"][k] = number(get(r.eval, "kl_mean"))
                values["top1"][k] = number(get(r.eval, "top1_agreement"))
        series[size_label(size)] = values
    if not any(math.isfinite(v) for vs in series.values() for m in vs.values() for v in m):
        return []
    heading = "Evaluation by criterion" if grid else "Evaluation by run"
    return [plots_compare.eval_plot("eval-summary", f"{heading} and plan size", rows, series)]


def agreement_section(runs: list[Run], notes: list[str]) -> list[Block]:
    """Per plan size with two runs or more: the pair table and per-layer lines, or for a big group
    the runs x runs matrix and its values."""
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
    drawn: list[tuple[dict[Any, float], str]] = []  # (Spearman by pair of score sets, plan size) drawn so far
    for g in compared:
        blocks.append(Text(f"{g.label[0].upper()}{g.label[1:]}: {len(g.runs)} runs", heading=True))
        if len(g.pairs) <= plots.MAX_LINES:
            blocks += _agreement_lines(g, len(compared) > 1, notes)
            continue
        jac, rho = agreement_matrix(g)
        upper = np.array(rho)
        keys = [_scores_key(r) for r in g.runs]
        by_pair = {
            frozenset((keys[a], keys[b])): float(upper[a, b]) for a in range(len(keys)) for b in range(a + 1, len(keys))
        }
        same = next((size for seen, size in drawn if _same_values(by_pair, seen)), None)
        if extremes_text := extremes(g):
            blocks.append(Text(extremes_text))
        if same is not None:
            blocks.append(
                Text(
                    f"The Spearman correlations of the scores are those of {same}: scores do not depend on how many "
                    "experts are pruned, so this matrix shows the Jaccard index only."
                )
            )
            upper = np.full_like(upper, math.nan)
        else:
            drawn.append((by_pair, g.label))
        blocks.append(
            plots_compare.matrix_plot(
                f"agreement-{g.slug}-matrix",
                f"Agreement between runs, {g.label}",
                [r.name for r in g.runs],
                np.array(jac),
                upper,
                "mean Jaccard index of pruned sets",
                "mean Spearman ρ of scores",
                expected_jaccard(*g.size),
            )
        )
        blocks.append(matrix_table(g))
        if all(math.isnan(v) for p in g.pairs for v in p.spearman):
            notes.append(f"no two runs with {g.label} have scores for a common layer: no Spearman values")
    return blocks


def _scores_key(r: Run) -> Any:
    """What a run's Spearman correlations depend on: its criterion, direction and scores."""
    return (r.plan.criterion, r.plan.direction, tuple((i, tuple(s)) for i, s in sorted(r.scores.items())))


def _same_values(pairs: dict[Any, float], seen: dict[Any, float]) -> bool:
    """Whether every pair of score sets has the value ``seen`` already showed (NaN equal to NaN)."""
    if len(set(pairs)) != len(pairs) or any(len(k) < 2 for k in pairs):  # identical scores in one group
        return False
    return all(k in seen and (v == seen[k] or (math.isnan(v) and math.isnan(seen[k]))) for k, v in pairs.items())


def _agreement_lines(group: Group, suffix: bool, notes: list[str]) -> list[Block]:
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
    blocks: list[Block] = [agreement_table(pairs)]
    blocks.append(
        plots_compare.agreement_plot(f"agreement-{group.slug}-jaccard", "jaccard", layers, series("jaccard"), base, end)
    )
    if any(math.isfinite(v) for p in pairs for v in p.spearman):
        blocks.append(
            plots_compare.agreement_plot(
                f"agreement-{group.slug}-spearman", "spearman", layers, series("spearman"), None, end
            )
        )
    else:
        notes.append(f"no two runs with {group.label} have scores for a common layer: no Spearman figure")
    return blocks


def score_figures(runs: list[Run], notes: list[str]) -> list[Block]:
    """One figure per distinct set of scores, shared by the runs that have them."""
    figs: list[Block] = []
    for members in score_groups(runs):
        first = members[0]
        n = runs.index(first) + 1
        name = f"{n}-{slug(first.name if len(members) == 1 else first.plan.criterion)}"
        layers = sorted({i for r in members for i in r.layers})
        figs.append(
            plots.score_plot(
                f"scores-{name}",
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


def map_figures(runs: list[Run]) -> list[Block]:
    """A map per run for a few runs; one grid of small maps for more: criterion x plan size when
    the runs fit that table and have two to four plan sizes, else in order, at most four to a row,
    each plan size starting a row."""
    if len(runs) <= FEW_RUNS:
        return [
            plots_maps.map_plot(
                f"map-{n}-{slug(r.name)}", r.name, r.plan.criterion, r.layers, r.plan.n_experts, r.pruned()
            )
            for n, r in enumerate(runs, 1)
        ]

    def panel(r: Run | None) -> plots_maps.MapPanel | None:
        return None if r is None else plots_maps.MapPanel(r.name, r.layers, r.plan.n_experts, r.pruned())

    grid = criterion_grid(runs)
    heading = f"Kept and pruned experts: {len(runs)} runs"
    if grid and 2 <= len(grid[1]) <= 4:
        criteria, sizes, cells = grid
        rows = [[panel(cells.get((c, size))) for size in sizes] for c in criteria]
        columns = [f"{z[1]} of {z[0]} pruned per layer" for z in sizes]
        return [plots_maps.map_grid_plot("map-all", heading, rows, columns)]
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
    return [plots_maps.map_grid_plot("map-all", heading, rows)]
