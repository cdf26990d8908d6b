"""The answer at the top of the report: for this model and each plan size, which criterion lost least,
by how much, how stable its selection is, and what the selection principle recommends.

Per plan size (p of E experts pruned per layer), among the evaluated runs: the lowest mean KL
(base ‖ pruned) and the lowest perplexity ratio, each with its margin to the next best and to
``random`` when a random run of that size is there. Ties keep the runs' order. A criterion's
stability is the mean Jaccard of its pruned sets on bootstrap resamples of the calibration shards
against the full-data selection (scoring/stability.py); weight criteria read no calibration data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moeprune.report.blocks import DASH, Table, Text, display, get, number, ppl_ratio
from moeprune.report.runs import Run, plan_groups, size_label
from moeprune.scoring.recommend import GOALS, PAPER, recommend
from moeprune.scoring.stability import Stability
from moeprune.scoring.unified import stats_criterion

Stabilities = dict[tuple[str, tuple[int, int]], Stability]
"""(criterion, plan size) -> its stability."""


@dataclass
class Best:
    """The run with the lowest value of a metric in one plan size, and its margins."""

    metric: str
    run: Run
    value: float
    next: tuple[Run, float] | None
    random: tuple[Run, float] | None


def model_line(runs: list[Run], stats_model: str | None = None) -> str:
    """``tiny-moe (qwen3_moe, 16 routed experts in each of 4 MoE layers)``."""
    first = runs[0]
    source = first.plan.source
    name = (source.model if source is not None else None) or next(
        (get(r.eval, "base") for r in runs if isinstance(get(r.eval, "base"), str)), None
    )
    name = display(str(name or stats_model or "the base model"))
    family = next((r.family for r in runs if r.family), None)
    layers = max(len(r.plan.layers) for r in runs)
    what = f"{first.plan.n_experts} routed experts in each of {layers} MoE layers"
    return f"{name} ({family + ', ' if family else ''}{what})"


def _label(run: Run, runs: list[Run]) -> str:
    """The criterion when it names one run of this plan size, else the run's name."""
    same = [r for r in runs if r.size == run.size and r.plan.criterion == run.plan.criterion]
    return run.plan.criterion if len(same) == 1 else run.name


def best(runs: list[Run], metric: str) -> Best | None:
    """The lowest ``metric`` (``kl`` or ``ppl``) among ``runs`` (one plan size), with its margins."""
    values = [(r, number(get(r.eval, "kl_mean") if metric == "kl" else ppl_ratio(r.eval))) for r in runs]
    ranked = sorted([(r, v) for r, v in values if math.isfinite(v)], key=lambda x: x[1])
    if not ranked:
        return None
    (run, value), rest = ranked[0], ranked[1:]
    rand = next(((r, v) for r, v in rest if r.plan.criterion == "random"), None)
    return Best(metric, run, value, rest[0] if rest else None, rand)


def _value(metric: str, v: float) -> str:
    return f"KL {v:.3g}" if metric == "kl" else f"perplexity ×{v:.3f}"


def _margin(metric: str, b: Best, other: tuple[Run, float], runs: list[Run]) -> str:
    r, v = other
    name = "" if r.plan.criterion == "random" else f"{_label(r, runs)} "
    if metric == "kl":
        if b.value <= 0:
            more = f"+{v - b.value:.3g}"
        else:
            more = f"+{(v / b.value - 1) * 100:.0f}%" if v < 1.5 * b.value else f"{v / b.value:.1f}× as much"
        return f"{name}{v:.3g}, {more}"
    more = f"+{(v / b.value - 1) * 100:.1f}%" if v < 1.5 * b.value else f"{v / b.value:.1f}× as high"
    return f"{name}×{v:.3f}, {more}"


def _phrase(b: Best, runs: list[Run]) -> str:
    text = _value(b.metric, b.value)
    extra = []
    if b.next is not None and b.next[0].plan.criterion != "random":
        extra.append(f"next: {_margin(b.metric, b, b.next, runs)}")
    if b.random is not None:
        extra.append(f"random: {_margin(b.metric, b, b.random, runs)}")
    return text + (f" ({'; '.join(extra)})" if extra else "")


def stability_words(criterion: str, size: tuple[int, int], stab: Stabilities | None) -> str:
    """How stable ``criterion``'s selection is at ``size``, in a few words ("" when not measured)."""
    if stats_criterion(criterion) is None:
        return "the same for any calibration data (it reads none)" if criterion != "random" else ""
    s = (stab or {}).get((criterion, size))
    if s is None:
        return ""
    return (
        f"mean Jaccard {s.overall:.2f} against the full-data selection on resampled calibration data "
        f"(random: {s.random:.2f})"
    )


def _short_stability(criterion: str, size: tuple[int, int], stab: Stabilities | None) -> str:
    if stats_criterion(criterion) is None:
        return "1 by construction (no calibration data)" if criterion != "random" else ""
    s = (stab or {}).get((criterion, size))
    return "" if s is None else f"{s.overall:.2f} (random selections: {s.random:.2f})"


def headline(runs: list[Run], stab: Stabilities | None, stats_model: str | None = None) -> list[Text | Table]:
    """The opening paragraph and the table of the best criterion per plan size."""
    about = model_line(runs, stats_model)
    if len(runs) == 1:
        return [Text(_single(runs[0], about, stab), lead=True)]
    sentences = [f"Base model: {about}."]
    rows = []
    for g in plan_groups(runs):
        evaluated = [r for r in g.runs if r.eval is not None]
        kl, ppl = best(evaluated, "kl"), best(evaluated, "ppl")
        if kl is None and ppl is None:
            continue
        share = f"{g.size[1] / g.size[0]:.0%}"
        lead = f"Removing {g.size[1]} of {g.size[0]} experts per layer ({share})"
        if kl and ppl and kl.run is ppl.run:
            both = f"{_phrase(kl, g.runs)}; {_phrase(ppl, g.runs)}"
            text = f"{lead}, {_label(kl.run, g.runs)} lost least by both measures: {both}."
        else:
            parts = [
                f"{_label(b.run, g.runs)} by {'KL' if b.metric == 'kl' else 'perplexity'}: {_phrase(b, g.runs)}"
                for b in (kl, ppl)
                if b
            ]
            text = f"{lead}, lost least: {'; '.join(parts)}."
        winner = (kl or ppl).run  # type: ignore[union-attr]
        words = stability_words(winner.plan.criterion, g.size, stab)
        if words:
            text += f" {_label(winner, g.runs)}'s selection: {words}."
        sentences.append(text)
        rows.append(
            [
                size_label(g.size),
                f"{_label(kl.run, g.runs)}: {_phrase(kl, g.runs)}" if kl else DASH,
                f"{_label(ppl.run, g.runs)}: {_phrase(ppl, g.runs)}" if ppl else DASH,
                _short_stability(winner.plan.criterion, g.size, stab) or DASH,
            ]
        )
    if not rows:
        sentences.append(
            "No run has an eval.json: evaluate them (moeprune eval RUN --base MODEL --ppl TEXT) to compare the "
            "criteria by KL and perplexity."
        )
        return [Text(" ".join(sentences), lead=True)]
    sentences[-1] += " Lower is better for both: KL is the mean per-token divergence from the base model's predictions."
    header = [
        "plan size",
        "lowest KL (margins)",
        "lowest perplexity ratio (margins)",
        "stability of the lowest-KL choice (mean Jaccard on resampled data)",
    ]
    return [*[Text(t, lead=True) for t in sentences], Table("", header, rows)]


def _single(run: Run, about: str, stab: Stabilities | None) -> str:
    p, e = run.plan.n_pruned, run.plan.n_experts
    text = f"{run.name}: {run.plan.criterion} pruned {p} of {e} experts in every MoE layer ({p / e:.0%}) of {about}."
    kl, ratio = number(get(run.eval, "kl_mean")), number(ppl_ratio(run.eval))
    measured = [f"KL {kl:.3g}" if math.isfinite(kl) else "", f"perplexity ×{ratio:.3f}" if math.isfinite(ratio) else ""]
    if any(measured):
        text += f" Against the base model: {', '.join(m for m in measured if m)}."
    elif run.eval is None:
        text += " Not evaluated (no eval.json)."
    words = stability_words(run.plan.criterion, run.size, stab)
    if words:
        text += f" Its selection: {words}."
    return text


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def recommendation(runs: list[Run], has_stats: bool) -> Table:
    """The selection principle's recommendation per goal, beside where those criteria ranked here."""
    rows = []
    for goal in GOALS:
        advice = recommend(goal, has_stats or any(stats_criterion(r.plan.criterion) for r in runs))
        measured = []
        for g in plan_groups(runs):
            ranked = sorted(
                (r for r in g.runs if math.isfinite(number(get(r.eval, "kl_mean")))),
                key=lambda r: number(get(r.eval, "kl_mean")),
            )
            for c in advice.recommended:
                found = [k for k, r in enumerate(ranked) if r.plan.criterion == c]
                if found:
                    measured.append(
                        f"{c}: {_ordinal(found[0] + 1)} of {len(ranked)} by KL at {g.size[1]} of {g.size[0]}"
                    )
        rows.append(
            [
                goal,
                " or ".join(advice.recommended),
                advice.reason,
                "; ".join(measured) or "not evaluated here",
            ]
        )
    return Table(
        f"What the selection principle recommends ({PAPER})",
        ["goal", "criteria", "why", "measured here"],
        rows,
        "task-agnostic: the downstream tasks are unknown and the calibration text is generic. task-specific: the "
        "calibration text comes from the target domain. A ranking on one held-out text measures one distribution: "
        "it does not settle which goal applies.",
    )
