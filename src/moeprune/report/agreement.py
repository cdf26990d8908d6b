"""How much runs agree: Jaccard of pruned sets, Spearman of scores, pairs and matrices by plan size.

Agreement is measured only between runs of the same plan size (the same number of experts pruned
per layer out of the same number), per MoE layer both have: the Jaccard index of their pruned sets,
and the Spearman correlation of their scores, oriented so that higher always means "kept" (scores
of a ``higher_pruned`` criterion are negated), so criteria that agree correlate positively.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from moeprune.plan import HIGHER_PRUNED
from moeprune.report.runs import Group, Run, plan_groups
from moeprune.scoring.stability import expected_jaccard

__all__ = [
    "Pair",
    "agreement",
    "agreement_matrix",
    "criterion_grid",
    "expected_jaccard",
    "jaccard",
    "mean",
    "rankdata",
    "score_groups",
    "spearman",
]


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


def mean(values: Iterable[float]) -> float:
    """The mean of the finite values (NaN when there is none)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """|A ∩ B| / |A ∪ B| (1 when both are empty)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


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
        jac[a][b] = jac[b][a] = mean(p.jaccard)
        rho[a][b] = rho[b][a] = mean(p.spearman)
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
