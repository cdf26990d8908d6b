"""The report's selection-stability section: how much each statistics criterion's pruned set moves
when the calibration data is resampled (scoring/stability.py), at the plan sizes of the runs.

Given the STATS folder the runs were scored from (``moeprune report --stats S``), it measures the
statistics criteria among the runs at each of their plan sizes: a table (bootstrap mean Jaccard
overall and in the least stable layer, halves, random), a figure of the curve over the share of the
data, and the per-layer values (folded). Weight criteria are stable by construction and said so.
Statistics written before per-shard moments existed give a note instead of the section.
"""

from __future__ import annotations

import os
from typing import Any

from moeprune.errors import InputError
from moeprune.report.blocks import Table, Text
from moeprune.report.headline import Stabilities
from moeprune.report.plots_compare import stability_plot
from moeprune.report.runs import Run, size_label
from moeprune.scoring.stability import NO_SHARDS, stability
from moeprune.scoring.stats import RoutingStats
from moeprune.scoring.unified import stats_criterion

Block = Any


def load_stats(path: str | os.PathLike[str], runs: list[Run]) -> RoutingStats:
    """The STATS folder, checked against the runs: same expert count, MoE layers and, where the
    plans record it, the same model."""
    stats = RoutingStats.load(path)
    for r in runs:
        mine = r.plan.source.fingerprint if r.plan.source is not None else None
        theirs = stats.meta.get("model_fingerprint")
        if r.plan.n_experts != stats.n_experts or not set(stats.layers) <= set(r.plan.layers):
            raise InputError(
                f"{path}: statistics of another model ({stats.n_experts} experts, MoE layers {stats.layers}); "
                f"{r.name} pruned {r.plan.n_experts} experts in layers {r.layers}"
            )
        if mine is not None and theirs is not None and mine != theirs:
            raise InputError(f"{path}: statistics of another model than the one {r.name} was pruned from")
    return stats


def measure(runs: list[Run], stats: RoutingStats | None) -> Stabilities:
    """(criterion, plan size) -> stability, for every statistics criterion among the runs."""
    if stats is None or stats.shards is None:
        return {}
    out: Stabilities = {}
    groups = runs[0].groups()
    for size in sorted({r.size for r in runs}):
        criteria = list(dict.fromkeys(r.plan.criterion for r in runs if r.size == size))
        found = [c for c in (stats_criterion(name) for name in criteria) if c is not None]
        for s in stability(stats, found, size[1], groups):
            out[(s.criterion, size)] = s
    return out


def section(runs: list[Run], stats: RoutingStats | None, stab: Stabilities, notes: list[str]) -> list[Block]:
    if stats is None:
        return []
    if stats.shards is None:
        notes.append(f"no selection-stability section: {NO_SHARDS}")
        return []
    weight = sorted({r.plan.criterion for r in runs if stats_criterion(r.plan.criterion) is None} - {"random"})
    blocks: list[Block] = []
    first = next(iter(stab.values()), None)
    shards = stats.n_shards
    intro = (
        f"Calibration kept its moments per shard ({shards} disjoint slices of its {stats.meta.get('n_tokens', '?')} "
        "tokens), so every statistics criterion can be recomputed on resampled data without running the model. "
        "Each cell is the mean Jaccard index of the pruned sets on resampled data against the selection from all "
        "the data (1: the same experts whatever the sample; random selections score the last column)."
    )
    if first is not None:
        intro += (
            f" Bootstrap: {first.resamples} draws of {shards} shards with replacement (seed {first.seed}); "
            f"halves: every choice of {shards // 2} shards."
        )
    if weight:
        intro += (
            f" {', '.join(weight)} read no calibration data: the same experts for any data (Jaccard 1), "
            "by construction."
        )
    blocks.append(Text(intro))
    if not stab:
        return blocks
    rows = []
    for (criterion, size), s in stab.items():
        layer, worst = s.worst
        rows.append(
            [
                criterion,
                size_label(size),
                f"{s.overall:.3f}",
                f"{worst:.3f} (layer {layer})",
                f"{s.halves_overall:.3f}",
                f"{s.curve[0]:.3f}",
                f"{s.random:.3f}",
            ]
        )
    header = [
        "criterion",
        "plan size",
        "bootstrap",
        "least stable layer",
        "halves",
        f"1/{shards} of the data",
        "random",
    ]
    blocks.append(Table("", header, rows))
    panels: dict[str, dict[str, list[float]]] = {}
    baselines: dict[str, float] = {}
    for (criterion, size), s in stab.items():
        panels.setdefault(size_label(size), {})[criterion] = s.curve
        baselines[size_label(size)] = s.random
    blocks.append(
        stability_plot("stability-curve", "Selection stability by the share of the calibration data", panels, baselines)
    )
    layers = first.layers if first is not None else []
    per_layer = [[c, f"{size[1]} of {size[0]}", *[f"{v:.2f}" for v in s.bootstrap]] for (c, size), s in stab.items()]
    blocks.append(
        Table(
            "Bootstrap mean Jaccard per MoE layer",
            ["criterion", "pruned", *[str(i) for i in layers]],
            per_layer,
            collapsed=True,
        )
    )
    return blocks
