"""Calibration-free criteria: functions of each expert's pooled weight moments, and their registry.

A weight criterion sees, per MoE layer, the pooled moments n, sum |w| and sum w^2 of every routed
expert's matrices (gate, up, down; biases and quantization scales excluded), which
`scoring.weights` streams from a safetensors checkpoint and `gguf.moments` from a GGUF file.
Every criterion is a function of those moments, so ``--criterion all`` costs one pass:

- ``aimer``: mean|w| / sqrt(mean w^2) = sum|w| / sqrt(n * sum w^2); HIGH scores pruned
  (arXiv 2603.18492). An all-zero expert scores 0.
- ``magnitude``: mean |w|; LOW scores pruned.
- ``random``: a uniform draw seeded by (seed, layer); LOW pruned (so p random experts go).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from moeprune.errors import InputError
from moeprune.plan import HIGHER_PRUNED, LOWER_PRUNED


@dataclass
class WeightMoments:
    """Pooled weight moments of every expert in one layer: sequences of E floats (lists here; any
    indexable sequence, numpy arrays included, works with the criteria)."""

    n: list[float]
    sum_abs: list[float]
    sum_sq: list[float]

    @classmethod
    def zeros(cls, n_experts: int) -> WeightMoments:
        return cls([0.0] * n_experts, [0.0] * n_experts, [0.0] * n_experts)


@dataclass(frozen=True)
class WeightCriterion:
    name: str
    direction: str
    needs_weights: bool
    score: Callable[[WeightMoments, int, int], list[float]]
    """(moments of one layer, layer index, seed) -> one score per expert."""
    doc: str


def _aimer(m: WeightMoments, layer: int, seed: int) -> list[float]:
    return [float(a / math.sqrt(n * q)) if q != 0 else 0.0 for n, a, q in zip(m.n, m.sum_abs, m.sum_sq, strict=True)]


def _magnitude(m: WeightMoments, layer: int, seed: int) -> list[float]:
    return [float(a / max(n, 1)) for n, a in zip(m.n, m.sum_abs, strict=True)]


def _random(m: WeightMoments, layer: int, seed: int) -> list[float]:
    import numpy as np

    return [float(v) for v in np.random.default_rng([seed, layer]).random(len(m.n))]


WEIGHT_CRITERIA: dict[str, WeightCriterion] = {
    c.name: c
    for c in [
        WeightCriterion("aimer", HIGHER_PRUNED, True, _aimer, "mean|w| / RMS(w) over pooled gate/up/down"),
        WeightCriterion("magnitude", LOWER_PRUNED, True, _magnitude, "mean |w| over pooled gate/up/down"),
        WeightCriterion("random", LOWER_PRUNED, False, _random, "uniform random, seeded by (seed, layer)"),
    ]
}


def score_layers(moments: dict[int, WeightMoments], criterion: str, seed: int = 0) -> dict[int, list[float]]:
    c = WEIGHT_CRITERIA[criterion]
    scores = {i: c.score(m, i, seed) for i, m in moments.items()}
    for i, s in scores.items():
        bad = next((j for j, v in enumerate(s) if not math.isfinite(v)), None)
        if bad is not None:
            raise InputError(f"layer {i}, expert {bad}: its {criterion} score is not finite (inf or NaN in weights)")
    return scores
