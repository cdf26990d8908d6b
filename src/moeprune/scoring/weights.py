"""Calibration-free criteria computed from expert weights alone, streamed from the checkpoint.

One pass reads each routed expert's matrices (gate, up, down; biases excluded) once and
accumulates, per expert, the pooled moments n, sum |w| and sum w^2 in float64. Every weight
criterion is a function of those moments, so ``--criterion all`` costs one pass:

- ``aimer``: mean|w| / sqrt(mean w^2) = sum|w| / sqrt(n * sum w^2); HIGH scores pruned
  (arXiv 2603.18492). An all-zero expert scores 0.
- ``magnitude``: mean |w|; LOW scores pruned.
- ``random``: a uniform draw seeded by (seed, layer); LOW pruned (so p random experts go).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from moeprune.arch.layout import MoeLayer, MoeModel, is_weight
from moeprune.io.reader import Checkpoint
from moeprune.plan import HIGHER_PRUNED, LOWER_PRUNED

CHUNK_BYTES = 64 << 20
"""Largest slice read at once: bounds memory whatever the tensor size."""


@dataclass
class Moments:
    """Pooled weight moments of every expert in one layer, float64 arrays of shape (E,)."""

    n: np.ndarray
    sum_abs: np.ndarray
    sum_sq: np.ndarray

    @classmethod
    def zeros(cls, n_experts: int) -> Moments:
        return cls(*(np.zeros(n_experts, dtype=np.float64) for _ in range(3)))


@dataclass(frozen=True)
class WeightCriterion:
    name: str
    direction: str
    needs_weights: bool
    score: Callable[[Moments, int, int], list[float]]
    """(moments of one layer, layer index, seed) -> one score per expert."""
    doc: str


def _aimer(m: Moments, layer: int, seed: int) -> list[float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        s = m.sum_abs / np.sqrt(m.n * m.sum_sq)
    return [float(v) for v in np.where(m.sum_sq > 0, s, 0.0)]


def _magnitude(m: Moments, layer: int, seed: int) -> list[float]:
    return [float(v) for v in m.sum_abs / np.maximum(m.n, 1)]


def _random(m: Moments, layer: int, seed: int) -> list[float]:
    return [float(v) for v in np.random.default_rng([seed, layer]).random(len(m.n))]


WEIGHT_CRITERIA: dict[str, WeightCriterion] = {
    c.name: c
    for c in [
        WeightCriterion("aimer", HIGHER_PRUNED, True, _aimer, "mean|w| / RMS(w) over pooled gate/up/down"),
        WeightCriterion("magnitude", LOWER_PRUNED, True, _magnitude, "mean |w| over pooled gate/up/down"),
        WeightCriterion("random", LOWER_PRUNED, False, _random, "uniform random, seeded by (seed, layer)"),
    ]
}


def accumulate(x: torch.Tensor) -> tuple[float, float]:
    """(sum |x|, sum x^2) of a tensor, accumulated in float64."""
    v = x.reshape(-1)
    if not v.is_floating_point():
        raise TypeError(f"cannot score {x.dtype} weights")
    v = v.to(torch.float64)
    return float(v.abs().sum()), float(torch.dot(v, v))


def _work(layer: MoeLayer, model: MoeModel, ckpt: Checkpoint) -> Iterator[tuple[int, str, int, int]]:
    """(expert, tensor name, first element, element count) for every pooled chunk of a layer."""
    spans: list[tuple[int, str, int, int]] = []
    for j, names in sorted(layer.per_expert.items()):
        spans += [(j, name, 0, ckpt.info(name).numel) for name in names if is_weight(name)]
    for name in layer.fused:
        if is_weight(name):
            per = ckpt.info(name).numel // model.n_experts
            spans += [(j, name, j * per, per) for j in range(model.n_experts)]
    for j, name, start, count in spans:
        step = max(1, CHUNK_BYTES // ckpt.info(name).itemsize)
        for lo in range(start, start + count, step):
            yield j, name, lo, min(step, start + count - lo)


def layer_moments(ckpt: Checkpoint, model: MoeModel, layer: MoeLayer, pool: ThreadPoolExecutor | None = None) -> Moments:
    """Stream one layer's expert weights and return their pooled moments."""
    m = Moments.zeros(model.n_experts)

    def one(item: tuple[int, str, int, int]) -> tuple[int, int, float, float]:
        j, name, lo, count = item
        a, b = accumulate(ckpt.read_flat(name, lo, count))
        return j, count, a, b

    items = _work(layer, model, ckpt)
    results = pool.map(one, items) if pool is not None else map(one, items)
    for j, n, a, b in results:
        m.n[j] += n
        m.sum_abs[j] += a
        m.sum_sq[j] += b
    return m


def weight_moments(ckpt: Checkpoint, model: MoeModel, progress: Callable[[int], None] | None = None) -> dict[int, Moments]:
    """Moments of every MoE layer; ``progress(bytes)`` is called as data is consumed."""
    out: dict[int, Moments] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for layer in model.layers:
            out[layer.index] = layer_moments(ckpt, model, layer, pool)
            if progress is not None:
                progress(layer_bytes(ckpt, layer))
    return out


def layer_bytes(ckpt: Checkpoint, layer: MoeLayer) -> int:
    names = [n for names in layer.per_expert.values() for n in names] + layer.fused
    return sum(ckpt.info(n).nbytes for n in names if is_weight(n))


def score_layers(moments: dict[int, Moments], criterion: str, seed: int = 0) -> dict[int, list[float]]:
    c = WEIGHT_CRITERIA[criterion]
    scores = {i: c.score(m, i, seed) for i, m in moments.items()}
    for i, s in scores.items():
        if any(not math.isfinite(v) for v in s):
            raise ValueError(f"layer {i}: non-finite {criterion} score")
    return scores
