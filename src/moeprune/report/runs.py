"""Reading the runs a report shows: their plans, scores and evaluations, names, order and plan sizes.

A run folder holds ``moeprune_plan.json`` (required), ``scores.csv`` (read with the plan by
plan.py; without it the run has no score figure and no Spearman) and optionally ``eval.json`` (any key may be
missing; a missing value shows as a dash); ``config.json`` beside them gives the family and the
group-limited routing the selection follows.

Runs are ordered by plan size (experts per layer, then experts pruned per layer), then by criterion
in the order the criteria first appear, then as given. A folder given twice is shown once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moeprune.arch.spec import Groups
from moeprune.errors import InputError
from moeprune.eval.record import EVAL, load_eval
from moeprune.io.jsonfile import read_json
from moeprune.plan import PrunePlan


@dataclass
class Run:
    """One pruning run: its folder, a unique display name, the plan, scores and evaluation."""

    path: Path
    name: str
    plan: PrunePlan
    scores: dict[int, list[float]] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    """The pruned checkpoint's config.json (empty when the folder has none)."""

    @property
    def layers(self) -> list[int]:
        return sorted(self.plan.layers)

    @property
    def size(self) -> tuple[int, int]:
        """The plan size: (experts per layer, experts pruned per layer)."""
        return self.plan.n_experts, self.plan.n_pruned

    @property
    def family(self) -> str | None:
        source = self.plan.source
        family = source.family if source is not None else self.config.get("model_type")
        return family if isinstance(family, str) else None

    def pruned(self) -> dict[int, set[int]]:
        return {i: set(lp.pruned) for i, lp in self.plan.layers.items()}

    def groups(self) -> Groups | None:
        """The group-limited routing of the model (None: none, or no readable config.json)."""
        from moeprune.arch.families import family_for_config
        from moeprune.arch.layout import text_config
        from moeprune.errors import MoePruneError

        try:
            family = family_for_config(self.config)
            return family.groups(text_config(self.config, family))
        except (MoePruneError, KeyError, TypeError, ValueError, AttributeError):
            return None


@dataclass
class Group:
    """The runs of one plan size and the agreement of every pair of them."""

    size: tuple[int, int]
    runs: list[Run]
    pairs: list[Any] = field(default_factory=list)
    """agreement.Pair of every two runs compared."""

    @property
    def label(self) -> str:
        return size_label(self.size)

    @property
    def slug(self) -> str:
        return f"{self.size[1]}of{self.size[0]}"


def size_label(size: tuple[int, int]) -> str:
    """``4 of 16 experts pruned per layer`` for the plan size (16, 4)."""
    n_experts, n_pruned = size
    return f"{n_pruned} of {n_experts} experts pruned per layer"


def load_run(path: str | os.PathLike[str]) -> Run:
    """The run in folder ``path``; one clear :class:`InputError` when it is not a pruning run."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: no such folder; give folders written by `moeprune prune`")
    plan_file = path / "moeprune_plan.json"
    if not plan_file.is_file():
        raise InputError(f"{path}: no moeprune_plan.json; give folders written by `moeprune prune`")
    plan = PrunePlan.load(plan_file)
    if not plan.layers:
        raise InputError(f"{plan_file}: the plan has no layers")
    evaluation = path / EVAL
    found = load_eval(evaluation) if evaluation.exists() or evaluation.is_symlink() else None
    run = Run(path, path.resolve().name or str(path), plan, dict(plan.scores), found)
    run.config = _config(path / "config.json")
    return run


def load_runs(dirs: list[str | os.PathLike[str]], notes: list[str]) -> list[Run]:
    """The runs of ``dirs`` (each folder once), named apart and sorted."""
    seen: dict[Path, str] = {}
    unique = []
    for d in dirs:
        key = Path(d).resolve()
        if key in seen:
            notes.append(f"{Path(d).name} was given more than once: shown once")
            continue
        seen[key] = str(d)
        unique.append(d)
    runs = [load_run(d) for d in unique]
    _same_model(runs)
    unique_names(runs)
    return sort_runs(runs)


def _same_model(runs: list[Run]) -> None:
    """Refuse comparing runs pruned from different models (by their plans' recorded sources)."""
    known = [r for r in runs if r.plan.source is not None]
    for r in known[1:]:
        a, b = known[0].plan.source, r.plan.source
        assert a is not None and b is not None
        if a.fingerprint != b.fingerprint:
            raise InputError(
                f"{r.path} was pruned from {b.model}, {known[0].path} from {a.model} (another model or fine-tune); "
                "a report compares runs of one model"
            )


def _config(path: Path) -> dict[str, Any]:
    """The run's config.json for the report's labels, or {} when it is missing or unreadable (the
    run is still shown; nothing from it is trusted beyond labels)."""
    try:
        data = read_json(path, "config.json") if path.is_file() else None
    except InputError:
        return {}
    return data if isinstance(data, dict) else {}


def unique_names(runs: list[Run]) -> None:
    """Shortest trailing path parts that tell the runs apart (``aimer``, or ``a/model``, ``b/model``);
    never the file-system root."""
    parts = [r.path.resolve().parts[1:] or (r.path.name,) for r in runs]
    names = ["/".join(p[-1:]) for p in parts]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            break
    for run, name in zip(runs, names, strict=True):
        run.name = name


def sort_runs(runs: list[Run]) -> list[Run]:
    """By plan size, then criterion (in order of first appearance), then as given."""
    first: dict[str, int] = {}
    for r in runs:
        first.setdefault(r.plan.criterion, len(first))
    order = sorted(range(len(runs)), key=lambda k: (runs[k].size, first[runs[k].plan.criterion], k))
    return [runs[k] for k in order]


def plan_groups(runs: list[Run]) -> list[Group]:
    """The runs by plan size, smallest first, each group in the order given."""
    by: dict[tuple[int, int], list[Run]] = {}
    for r in runs:
        by.setdefault(r.size, []).append(r)
    return [Group(size, members) for size, members in sorted(by.items())]
