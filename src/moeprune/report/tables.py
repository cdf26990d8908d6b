"""The report's tables: the runs, their evaluation (perplexity, KL, top-1; tasks) and their agreement."""

from __future__ import annotations

import math
from typing import Any

from moeprune.report.agreement import Pair, agreement_matrix, expected_jaccard, mean
from moeprune.report.blocks import DASH, Table, data_words, fmt, get, ppl_ratio
from moeprune.report.runs import Group, Run

MAX_SEPARATE_TASK_ROWS = 3
"""Up to this many evaluated runs, the task table has a row per (run, task); more: a row per run."""


def runs_table(runs: list[Run]) -> Table:
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
        ]
        for r in runs
    ]
    header = ["run", "criterion", "direction", "experts", "pruned/layer", "ratio", "MoE layers", "scores", "eval"]
    return Table("Runs", header, rows, collapsed=len(runs) > 3)


def eval_tables(runs: list[Run]) -> list[Table]:
    """The perplexity table (every run, dashes for the runs without eval.json) and the task table."""
    evaluated = [r for r in runs if r.eval is not None]
    if not evaluated:
        return []
    shared: list[str] = []
    columns: list[str] = []  # eval.json keys whose values differ between runs
    for key in ("model", "base", "data"):
        values = {_value(r.eval, key) for r in evaluated}
        if len(values) == 1:
            if (value := values.pop()) != DASH:
                shared.append(f"{key}: {value}")
        elif key != "model":  # the evaluated model is the run's own checkpoint: the run column names it
            columns.append(key)
    rows = [
        [
            r.name,
            r.plan.criterion,
            f"{r.plan.n_pruned} of {r.plan.n_experts}",
            fmt(get(r.eval, "perplexity", "pruned")),
            fmt(get(r.eval, "perplexity", "base")),
            fmt(ppl_ratio(r.eval) if r.eval is not None else None),
            fmt(get(r.eval, "kl_mean")),
            fmt(get(r.eval, "top1_agreement")),
            *[_value(r.eval, key) for key in columns],
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
    header += ["KL mean", "top-1 agreement", *columns]
    out = [Table("Perplexity and agreement with the base model", header, rows, note)]
    with_tasks = [r for r in evaluated if isinstance(get(r.eval, "tasks"), dict) and get(r.eval, "tasks")]
    if with_tasks:
        out.append(task_table(with_tasks) if len(with_tasks) <= MAX_SEPARATE_TASK_ROWS else task_matrix(with_tasks))
    return out


def _value(e: Any, key: str) -> str:
    return data_words(get(e, key)) if key == "data" else fmt(get(e, key))


def task_table(runs: list[Run]) -> Table:
    rows = [
        [
            r.name,
            str(task),
            fmt(get(t, "metric")),
            fmt(get(t, "score")),
            fmt(get(t, "base")),
            fmt(get(t, "recovery")),
        ]
        for r in runs
        for task, t in get(r.eval, "tasks").items()
    ]
    header = ["run", "task", "metric", "score (pruned)", "score (base)", "recovery"]
    return Table("Tasks", header, rows, "recovery: the pruned score relative to the base score.")


def task_matrix(runs: list[Run]) -> Table:
    """A row per run, a column per task: the score and, in brackets, the recovery; the base model's
    scores on the first row where every run reports the same."""
    tasks: dict[str, str] = {}  # task -> metric
    bases: dict[str, set[str]] = {}
    for r in runs:
        for task, t in get(r.eval, "tasks").items():
            if tasks.get(str(task)) in (None, DASH):
                tasks[str(task)] = fmt(get(t, "metric"))
            bases.setdefault(str(task), set()).add(fmt(get(t, "base")))

    def cell(t: Any) -> str:
        score, recovery = fmt(get(t, "score")), get(t, "recovery")
        if isinstance(recovery, int | float) and math.isfinite(recovery):
            return f"{score} ({recovery:.0%})"
        return score

    header = ["run", "criterion", "pruned", *[t if m == DASH else f"{t} ({m})" for t, m in tasks.items()]]
    header.append("mean recovery")
    rows = [["base model", DASH, "0", *[b.pop() if len(b) == 1 else DASH for b in map(set, bases.values())], DASH]]
    for r in runs:
        ts = get(r.eval, "tasks")
        recoveries = [get(ts, t, "recovery") for t in tasks]
        finite = [v for v in recoveries if isinstance(v, int | float) and math.isfinite(v)]
        avg = f"{sum(finite) / len(finite):.0%}" if finite else DASH
        rows.append([r.name, r.plan.criterion, f"{r.plan.n_pruned} of {r.plan.n_experts}"])
        rows[-1] += [cell(ts[t]) if t in ts else DASH for t in tasks] + [avg]
    return Table(
        "Tasks",
        header,
        rows,
        "Each cell: the pruned model's score and, in brackets, its recovery (pruned / base score). The first row "
        "holds the base model's scores (a dash where the runs report different ones or none).",
    )


def agreement_table(pairs: list[Pair]) -> Table:
    rows = [
        [
            p.a,
            p.b,
            str(len(p.layers)),
            fmt(mean(p.jaccard), 3),
            fmt(min(p.jaccard), 3),
            fmt(p.random_jaccard, 3),
            fmt(mean(p.spearman), 3),
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


def matrix_table(group: Group) -> Table:
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
        f"index |A ∩ B| / |A ∪ B| of the pruned experts (random selections: {fmt(expected_jaccard(*group.size), 3)}). "
        "Above the diagonal: the mean Spearman ρ of the scores, oriented so that higher means kept (a dash: no "
        "scores).",
        collapsed=True,
    )


def extremes(group: Group) -> str:
    """One sentence naming the most and the least alike pairs of a big group."""
    scored = sorted(((mean(p.jaccard), p) for p in group.pairs if math.isfinite(mean(p.jaccard))), key=lambda x: x[0])
    if len(scored) < 2:
        return ""
    (lo, a), (hi, b) = scored[0], scored[-1]
    return (
        f"Most alike: {b.a} and {b.b} (mean Jaccard {hi:.3f}); least alike: {a.a} and {a.b} ({lo:.3f}); "
        f"random selections: {expected_jaccard(*group.size):.3f}."
    )
