"""The pruning plan: how many experts each MoE layer loses and which ones.

Rules (docs/criteria.md): ``--ratio r`` removes ``p`` = the integer nearest to ``r * E`` experts
from every MoE layer (exact halves round down, i.e. under-prune); ``--prune p`` gives p directly.
The same p in every layer, since a config holds one expert count. Kept experts must still cover
top-k; group-limited routers lose p / n_group experts from every group. Within a layer, experts
are ranked by score in the criterion's direction; ties go to the lower expert id first.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from moeprune.arch.layout import MoeModel, describe
from moeprune.arch.spec import Groups
from moeprune.errors import InputError, PlanError
from moeprune.io.jsonfile import read_json, regular_file, validate
from moeprune.io.reader import Checkpoint
from moeprune.provenance import Source, check_source, load_source

HIGHER_PRUNED = "higher_pruned"
LOWER_PRUNED = "lower_pruned"


@dataclass
class LayerPlan:
    kept: list[int]
    pruned: list[int]


PLAN = "moeprune_plan.json"
SCORES_CSV = "scores.csv"
FORMAT = "moeprune.plan"
VERSION = 1


@dataclass
class PrunePlan:
    """Per MoE layer: the original ids kept and pruned, with the scores that chose them, and the
    model they were chosen on. Saved as ``moeprune_plan.json`` + ``scores.csv`` (this module is
    their one reader and writer)."""

    criterion: str
    direction: str
    ratio: float
    n_experts: int
    layers: dict[int, LayerPlan]
    scores: dict[int, list[float]]
    source: Source | None = None

    @property
    def n_pruned(self) -> int:
        return len(next(iter(self.layers.values())).pruned)

    @property
    def n_kept(self) -> int:
        return self.n_experts - self.n_pruned

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "criterion": self.criterion,
            "direction": self.direction,
            "ratio": self.ratio,
            "n_experts": self.n_experts,
            "n_pruned_per_layer": self.n_pruned,
            **({"source": self.source.to_json()} if self.source is not None else {}),
            "layers": {str(i): {"kept": lp.kept, "pruned": lp.pruned} for i, lp in self.layers.items()},
        }

    def save(self, folder: Path) -> None:
        """``moeprune_plan.json`` and ``scores.csv`` (layer, expert, score, rank, pruned)."""
        (folder / PLAN).write_text(json.dumps(self.to_json(), indent=1) + "\n")
        lines = ["layer,expert,score,rank,pruned"]
        for i, scores in self.scores.items():
            ranks = rank_for_pruning(scores, self.direction)
            pruned = set(self.layers[i].pruned)
            for j, s in enumerate(scores):
                lines.append(f"{i},{j},{s!r},{ranks[j]},{int(j in pruned)}")
        (folder / SCORES_CSV).write_text("\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: Path) -> PrunePlan:
        """A ``moeprune_plan.json`` (checked: every layer splits 0..E-1 into kept and pruned, the
        same number pruned everywhere), with the scores of the ``scores.csv`` beside it, if any."""
        path = Path(path)
        d = validate(_schema(), read_json(path, "plan"), str(path))
        source = load_source(d.source, str(path))
        layers = {}
        for key, lp in d.layers.items():
            if sorted(lp.kept + lp.pruned) != list(range(d.n_experts)) or lp.kept != sorted(lp.kept):
                raise InputError(f"{path}: layer {key}: kept and pruned ids must split 0..{d.n_experts - 1}, in order")
            if lp.pruned != sorted(lp.pruned) or len(lp.pruned) != len(next(iter(d.layers.values())).pruned):
                raise InputError(f"{path}: layer {key}: pruned ids out of order, or not as many as in other layers")
            layers[int(key)] = LayerPlan(list(lp.kept), list(lp.pruned))
        if not any(lp.pruned for lp in layers.values()):
            raise InputError(f"{path}: the plan prunes nothing")
        n_pruned = len(next(iter(layers.values())).pruned)
        if d.n_pruned_per_layer is not None and d.n_pruned_per_layer != n_pruned:
            raise InputError(f"{path}: n_pruned_per_layer is {d.n_pruned_per_layer}, but the layers prune {n_pruned}")
        src = source
        if src is not None and (src.n_experts != d.n_experts or not set(layers) <= set(src.moe_layers)):
            raise InputError(f"{path}: its layers or expert count do not match the model it records ({src.model})")
        csv_file = path.parent / SCORES_CSV
        scores = _read_scores_csv(csv_file, d.n_experts) if csv_file.exists() or csv_file.is_symlink() else {}
        return cls(d.criterion, d.direction, d.ratio, d.n_experts, layers, scores, source)

    def check_model(self, ckpt: Checkpoint, moe: MoeModel, what: str) -> None:
        """Refuse applying this plan to (or comparing it with) a model it was not made on: its
        recorded source, or for plans written before sources were recorded, its shape."""
        check_source(self.source, ckpt, moe, what)
        ids = {layer.index for layer in moe.layers}
        if self.n_experts != moe.n_experts or not set(self.layers) <= ids:
            raise InputError(
                f"{what} came from a model with {self.n_experts} experts and MoE layers "
                f"{sorted(self.layers)[:4]}..., not from {ckpt.path} ({moe.n_experts} experts)"
            )


def check_pruned_from(pruned: Path, base: str | os.PathLike[str]) -> PrunePlan:
    """The plan of the pruned folder ``pruned``, after checking it was made from ``base`` (one
    line naming the model it came from when not); reads headers and router weights only."""
    plan_file = Path(pruned) / PLAN
    if not (plan_file.exists() or plan_file.is_symlink()):
        raise InputError(f"{pruned}: no {PLAN} (not a folder written by moeprune prune)")
    made = PrunePlan.load(plan_file)
    with Checkpoint.open(base) as ckpt:
        made.check_model(ckpt, describe(ckpt.config, ckpt.tensors), str(pruned))
    return made


@cache
def _schema() -> Any:
    """The pydantic model of moeprune_plan.json, built on first use (no import cost at start-up)."""
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

    class LayerFile(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)

        kept: list[Annotated[StrictInt, Field(ge=0)]]
        pruned: list[Annotated[StrictInt, Field(ge=0)]]

    class PlanFile(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)

        format: Literal["moeprune.plan"] | None = None
        version: Literal[1] | None = None
        criterion: StrictStr
        direction: Literal["higher_pruned", "lower_pruned"]
        ratio: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
        n_experts: Annotated[StrictInt, Field(ge=2, le=1 << 24)]
        n_pruned_per_layer: Annotated[StrictInt, Field(ge=1, le=1 << 24)] | None = None
        source: dict[str, Any] | None = None
        layers: dict[Annotated[StrictStr, Field(pattern=r"^[0-9]{1,7}$")], LayerFile] = Field(min_length=1)

    return PlanFile


def _read_scores_csv(path: Path, n_experts: int) -> dict[int, list[float]]:
    """``scores.csv``: layer -> scores of expert 0..E-1 (every id once, finite)."""
    by_layer: dict[int, dict[int, float]] = {}
    regular_file(path, SCORES_CSV)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                value = float(row["score"])
                if not math.isfinite(value):
                    raise ValueError(f"score {row['score']} is not finite")
                by_layer.setdefault(int(row["layer"]), {})[int(row["expert"])] = value
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as e:
        raise InputError(f"{path}: not a moeprune scores.csv ({e.__class__.__name__}: {e})") from None
    out: dict[int, list[float]] = {}
    for layer, experts in sorted(by_layer.items()):
        if sorted(experts) != list(range(n_experts)):
            raise InputError(
                f"{path}: layer {layer} has scores for {len(experts)} expert ids, "
                f"the plan beside it has {n_experts} experts"
            )
        out[layer] = [experts[j] for j in range(n_experts)]
    return out


def n_to_prune(n_experts: int, ratio: float | None = None, prune: int | None = None) -> int:
    """Experts removed per layer: ``prune``, or the integer nearest to ``ratio * n_experts``
    with exact halves rounded down."""
    if (ratio is None) == (prune is None):
        raise PlanError("give exactly one of --ratio or --prune")
    if prune is not None:
        if prune < 1:
            raise PlanError(f"--prune must be at least 1 (got {prune})")
        return prune
    assert ratio is not None
    if not 0 < ratio < 1:
        raise PlanError(f"--ratio must be between 0 and 1, exclusive (got {ratio})")
    exact = Fraction(str(ratio)) * n_experts
    p = math.ceil(exact - Fraction(1, 2))
    if p < 1:
        raise PlanError(
            f"--ratio {ratio} of {n_experts} experts rounds to 0 removed per layer; "
            f"the smallest ratio that removes one is {1 / n_experts:.4g}"
        )
    return p


def check_feasible(n_experts: int, top_k: int, p: int, groups: Groups | None) -> None:
    """Fail before any weight is touched if removing p per layer breaks routing."""
    kept = n_experts - p
    if kept < top_k:
        raise PlanError(
            f"removing {p} of {n_experts} experts leaves {kept}, fewer than top-k = {top_k}; "
            f"remove at most {n_experts - top_k} per layer"
        )
    if groups is None:
        return
    g = groups.n_group
    per_group = n_experts // g
    if n_experts % g:
        raise PlanError(f"{n_experts} experts do not split into n_group = {g} equal groups")
    if p % g:
        lo, hi = p - p % g, p + g - p % g
        raise PlanError(
            f"this router has {g} expert groups; the number removed per layer must be a multiple of {g} "
            f"so every group loses the same number (got {p}; nearest: {lo or hi} or {hi})"
        )
    left = per_group - p // g
    if left < groups.min_per_group:
        raise PlanError(
            f"removing {p} leaves {left} expert(s) per group; this router needs at least {groups.min_per_group}"
        )
    if groups.topk_group * left < top_k:
        raise PlanError(
            f"removing {p} leaves {groups.topk_group} groups x {left} experts reachable per token, "
            f"fewer than top-k = {top_k}"
        )


def rank_for_pruning(scores: list[float], direction: str) -> list[int]:
    """Rank of each expert in pruning order (0 = pruned first); ties: lower id first."""
    sign = -1.0 if direction == HIGHER_PRUNED else 1.0
    order = sorted(range(len(scores)), key=lambda j: (sign * scores[j], j))
    ranks = [0] * len(scores)
    for r, j in enumerate(order):
        ranks[j] = r
    return ranks


def select(scores: list[float], direction: str, p: int, groups: Groups | None) -> LayerPlan:
    """Choose the p experts to remove from one layer (p / n_group per group when grouped)."""
    n = len(scores)
    g = groups.n_group if groups else 1
    size, per = n // g, p // g
    pruned: list[int] = []
    for start in range(0, n, size):
        ids = list(range(start, start + size))
        ranks = rank_for_pruning([scores[j] for j in ids], direction)
        pruned += [ids[k] for k in range(size) if ranks[k] < per]
    pruned.sort()
    return LayerPlan(kept=[j for j in range(n) if j not in set(pruned)], pruned=pruned)


def make_plan(
    criterion: str,
    direction: str,
    scores: dict[int, list[float]],
    n_experts: int,
    top_k: int,
    p: int,
    groups: Groups | None,
) -> PrunePlan:
    check_feasible(n_experts, top_k, p, groups)
    layers = {i: select(s, direction, p, groups) for i, s in scores.items()}
    return PrunePlan(criterion, direction, round(p / n_experts, 6), n_experts, layers, scores)
