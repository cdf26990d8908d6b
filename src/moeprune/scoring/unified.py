"""Calibration criteria of the unified formulation (arXiv 2606.15716) over routing statistics.

    S_j(b, α, β) = N_j^-b · Σ_{t routed to j} g_{j,t}^α · ‖f_j(x_t)‖₂^β

b = 0 keeps the sum over routed tokens (routing frequency baked in), b = 1 takes the mean over
them; α switches the gate weight on, β is the power of the expert-output norm. The lowest scores
are pruned in every layer. An expert that received no calibration token scores 0 under every
criterion (sums are empty; means are defined as 0, REAP's convention), so it is pruned first.

Named criteria: frequency (0,0,0), seer (0,1,0), ean (0,0,1), reap (1,1,1), man (1,0,1),
msan (1,0,2), gean (0,1,1) and s022 (0,2,2); any other as ``unified:b,α,β``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moeprune.errors import InputError
from moeprune.plan import LOWER_PRUNED

if TYPE_CHECKING:
    from moeprune.scoring.stats import RoutingStats


@dataclass(frozen=True)
class StatsCriterion:
    name: str
    b: int
    alpha: int
    beta: int
    doc: str
    direction: str = LOWER_PRUNED

    def scores(self, stats: RoutingStats) -> dict[int, list[float]]:
        """One score per expert of every MoE layer."""
        import torch

        out = {}
        for i in stats.layers:
            m = stats.layer(i)  # (E, 3, 3)
            total, n = m[:, self.alpha, self.beta], m[:, 0, 0]
            s = torch.where(n > 0, total / n.clamp(min=1), torch.zeros_like(total)) if self.b else total
            out[i] = [float(v) for v in s]
        return out


NAMED: dict[str, StatsCriterion] = {
    c.name: c
    for c in [
        StatsCriterion("frequency", 0, 0, 0, "routed tokens N_j"),
        StatsCriterion("seer", 0, 1, 0, "Σ g over routed tokens (SEER soft count)"),
        StatsCriterion("ean", 0, 0, 1, "Σ ‖f‖ over routed tokens (expert activation norm)"),
        StatsCriterion("reap", 1, 1, 1, "mean g·‖f‖ over routed tokens (REAP)"),
        StatsCriterion("man", 1, 0, 1, "mean ‖f‖ over routed tokens (task-agnostic)"),
        StatsCriterion("msan", 1, 0, 2, "mean ‖f‖² over routed tokens (task-agnostic)"),
        StatsCriterion("gean", 0, 1, 1, "Σ g·‖f‖ over routed tokens (task-specific)"),
        StatsCriterion("s022", 0, 2, 2, "Σ (g·‖f‖)² over routed tokens (task-specific)"),
    ]
}
_UNIFIED = re.compile(r"^unified:(\d+),(\d+),(\d+)$")


def stats_criterion(name: str) -> StatsCriterion | None:
    """The criterion called ``name`` (named or ``unified:b,α,β``), or None if it is not one."""
    if name in NAMED:
        return NAMED[name]
    m = _UNIFIED.match(name.replace(" ", ""))
    if m is None:
        return None
    b, alpha, beta = (int(g) for g in m.groups())
    if b not in (0, 1) or alpha not in (0, 1, 2) or beta not in (0, 1, 2):
        raise InputError(f"{name}: b must be 0 or 1 and α, β must be 0, 1 or 2")
    return StatsCriterion(f"unified:{b},{alpha},{beta}", b, alpha, beta, f"S({b},{alpha},{beta})")
