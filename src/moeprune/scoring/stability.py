"""Selection stability: how much a statistics criterion's pruned set moves with the calibration data.

A STATS folder written by ``calibrate`` holds the moments of S disjoint calibration shards (slices of
the calibration windows, scoring/stats.py). Moments add, so the moments of any multiset of shards
are a weighted sum of theirs, and every statistics criterion can be recomputed on resampled data
without running the model again. For a criterion and a plan size (p of E experts pruned per
layer), per MoE layer, the pruned set chosen from resampled moments is compared with the one chosen
from all the data by the Jaccard index |A ∩ B| / |A ∪ B|:

- **bootstrap**: ``resamples`` draws of S shards with replacement,
  ``numpy.random.default_rng(seed).integers(0, S, size=(resamples, S))`` (row r: the shards of
  draw r; a shard drawn twice counts twice); the mean Jaccard over the draws;
- **halves**: every choice of S // 2 of the S shards (half the data); the mean over them;
- **curve**: for k = 1 .. S, the mean over every choice of k shards (k/S of the data).

Each is reported per layer and overall (the mean over layers). The selection follows the plan's
rules (plan.select: the p lowest scores, ties to the lower id, p / n_group per group on
group-limited routers), vectorised over the resamples. Weight criteria (aimer, magnitude) do not
read calibration data: their selection is the same for any data (Jaccard 1), by construction.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from moeprune.arch.spec import Groups
from moeprune.errors import InputError, MoePruneError
from moeprune.plan import HIGHER_PRUNED
from moeprune.scoring.stats import RoutingStats
from moeprune.scoring.unified import NAMED, StatsCriterion, stats_criterion

RESAMPLES = 200
"""Bootstrap draws per criterion (the standard error of a mean Jaccard is then about 0.01)."""
SEED = 0
NO_SHARDS = (
    "these statistics were written without per-shard moments (before moeprune recorded them): "
    "run calibrate again to measure how stable a selection is"
)


@dataclass
class Stability:
    """Mean Jaccard index of the pruned sets on resampled data against the full-data selection."""

    criterion: str
    n_experts: int
    n_pruned: int
    layers: list[int]
    bootstrap: list[float]
    """Per layer: the mean over the bootstrap draws."""
    halves: list[float]
    """Per layer: the mean over every half of the shards."""
    curve: list[float]
    """k = 1 .. S: the mean over every choice of k shards and over the layers."""
    random: float
    """The expected Jaccard index of two random selections of p of E experts."""
    resamples: int
    seed: int

    @property
    def overall(self) -> float:
        return sum(self.bootstrap) / len(self.bootstrap)

    @property
    def worst(self) -> tuple[int, float]:
        """(layer, mean Jaccard) of the least stable layer."""
        k = min(range(len(self.layers)), key=lambda i: self.bootstrap[i])
        return self.layers[k], self.bootstrap[k]

    @property
    def halves_overall(self) -> float:
        return sum(self.halves) / len(self.halves)


def expected_jaccard(n: int, p: int) -> float:
    """Mean Jaccard index of two independent, uniformly random p-subsets of n experts."""
    if p <= 0 or p > n:
        return 1.0 if p == 0 else math.nan
    total = math.comb(n, p)
    return sum(
        math.comb(p, k) * math.comb(n - p, p - k) / total * k / (2 * p - k) for k in range(max(0, 2 * p - n), p + 1)
    )


def criterion_scores(c: StatsCriterion, moments: torch.Tensor) -> torch.Tensor:
    """S(b, α, β) of every expert for moments ``[..., E, 3, 3]`` (as StatsCriterion.scores)."""
    total, n = moments[..., c.alpha, c.beta], moments[..., 0, 0]
    return torch.where(n > 0, total / n.clamp(min=1), torch.zeros_like(total)) if c.b else total


def pruned_mask(scores: torch.Tensor, direction: str, p: int, groups: Groups | None) -> torch.Tensor:
    """Boolean ``[..., E]``: the experts plan.select prunes from each row of ``scores``."""
    key = -scores if direction == HIGHER_PRUNED else scores
    g = groups.n_group if groups else 1
    shape = key.shape
    key = key.reshape(*shape[:-1], g, shape[-1] // g)
    order = torch.sort(key, dim=-1, stable=True).indices  # ties keep id order: lower id first
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1]).expand_as(order).contiguous())
    return (ranks < p // g).reshape(shape)


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter, union = (a & b).sum(-1).double(), (a | b).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def bootstrap_draws(n_shards: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, S) shard ids of the bootstrap draws (see the module docstring)."""
    return np.random.default_rng(seed).integers(0, n_shards, size=(resamples, n_shards))


def _weights(n_shards: int, resamples: int, seed: int) -> tuple[torch.Tensor, list[slice]]:
    """Rows of shard weights: the bootstrap draws (counts), the halves, then every k-subset for
    k = 1 .. S (0/1); and the slice of each part: bootstrap, halves, k = 1, ..., k = S."""
    rows = [np.bincount(d, minlength=n_shards) for d in bootstrap_draws(n_shards, resamples, seed)]
    parts = [slice(0, len(rows))]
    for k in [max(1, n_shards // 2), *range(1, n_shards + 1)]:
        start = len(rows)
        for subset in itertools.combinations(range(n_shards), k):
            w = np.zeros(n_shards, dtype=np.int64)
            w[list(subset)] = 1
            rows.append(w)
        parts.append(slice(start, len(rows)))
    return torch.tensor(np.array(rows), dtype=torch.float64), parts


def stability(
    stats: RoutingStats,
    criteria: Sequence[str | StatsCriterion],
    n_pruned: int,
    groups: Groups | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> list[Stability]:
    """The stability of each statistics criterion in ``criteria`` at ``n_pruned`` experts per layer."""
    if stats.shards is None:
        raise InputError(NO_SHARDS)
    found = []
    for c in criteria:
        criterion = stats_criterion(c) if isinstance(c, str) else c
        if criterion is None:
            raise InputError(f"{c}: not a statistics criterion (weight criteria do not depend on calibration data)")
        found.append(criterion)
    n_exp, n_shards = stats.n_experts, stats.n_shards
    weights, parts = _weights(n_shards, resamples, seed)
    per: dict[str, list[list[float]]] = {c.name: [[] for _ in parts] for c in found}
    for k in range(len(stats.layers)):
        resampled = torch.einsum("rs,sexy->rexy", weights, stats.shards[k])  # (R, E, 3, 3)
        for c in found:
            full = pruned_mask(criterion_scores(c, stats.moments[k]), c.direction, n_pruned, groups)
            jac = _jaccard(pruned_mask(criterion_scores(c, resampled), c.direction, n_pruned, groups), full)
            for out, part in zip(per[c.name], parts, strict=True):
                out.append(float(jac[part].mean()))
    base = expected_jaccard(n_exp, n_pruned)
    result = []
    for c in found:
        boot, halves, *curve = per[c.name]
        overall = [sum(v) / len(v) for v in curve]
        result.append(
            Stability(c.name, n_exp, n_pruned, list(stats.layers), boot, halves, overall, base, resamples, seed)
        )
    return result


def table(results: Sequence[Stability]) -> str:
    """Plain text: per criterion and plan size, the bootstrap mean Jaccard (overall and the least
    stable layer) and the halves' mean; then the curve over k of S shards."""
    if not results:
        return ""
    first = results[0]
    n = len(first.curve)
    lines = [
        f"selection stability: mean Jaccard of the pruned sets on resampled calibration data against all of it "
        f"(1 = the same experts; {first.resamples} bootstrap draws of {n} shards, seed {first.seed})",
        f"{'criterion':>10} {'pruned':>8} {'bootstrap':>10} {'worst layer':>14} {'halves':>8} {'random':>8}",
    ]
    for r in results:
        layer, worst = r.worst
        lines.append(
            f"{r.criterion[:10]:>10} {f'{r.n_pruned}/{r.n_experts}':>8} {r.overall:>10.3f} "
            f"{f'{worst:.3f} (#{layer})':>14} {r.halves_overall:>8.3f} {r.random:>8.3f}"
        )
    lines.append("weight criteria (aimer, magnitude): 1 by construction, they read no calibration data")
    lines.append(f"\nby the share of the data: mean Jaccard on k of {n} shards (k/{n} of the calibration tokens)")
    lines.append(f"{'criterion':>10} {'pruned':>8} " + "".join(f"{f'{k}/{n}':>7}" for k in range(1, n + 1)))
    for r in results:
        lines.append(
            f"{r.criterion[:10]:>10} {f'{r.n_pruned}/{r.n_experts}':>8} " + "".join(f"{v:>7.3f}" for v in r.curve)
        )
    return "\n".join(lines)


def model_stability(
    model: str | os.PathLike[str],
    stats_path: str | os.PathLike[str],
    criterion: str,
    ratios: Sequence[float] = (0.25, 0.5),
) -> str:
    """``moeprune score MODEL --stats S --stability``: the table for ``criterion`` (a statistics
    criterion; every named one for ``all`` or a weight criterion) at each of ``ratios``."""
    from moeprune.arch.layout import describe
    from moeprune.io.reader import Checkpoint
    from moeprune.plan import check_feasible, n_to_prune

    ckpt = Checkpoint.open(model)
    with ckpt:
        moe = describe(ckpt.config, ckpt.tensors)
        stats = RoutingStats.load(stats_path)
        stats.check_model(ckpt, moe, stats_path)
    if stats.shards is None:
        return f"stability: not measured: {NO_SHARDS}"
    found = stats_criterion(criterion) if criterion != "all" else None
    criteria = [found] if found is not None else list(NAMED.values())
    results: list[Stability] = []
    notes = []
    for ratio in ratios:
        try:
            p = n_to_prune(moe.n_experts, ratio)
            check_feasible(moe.n_experts, moe.top_k, p, moe.groups)
        except MoePruneError as e:
            notes.append(f"ratio {ratio}: not measured ({e})")
            continue
        results += stability(stats, criteria, p, moe.groups)
    return "\n".join([table(results), *notes]).strip()
