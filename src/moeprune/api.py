"""The public operations, top to bottom: resolve -> index -> score -> select -> rewrite.

Every function takes a local folder or hub id, never loads a model (except `verify`), and
reports progress through an optional ``progress(kind, total_or_advance)`` callback so that the
library itself never prints.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moeprune.arch.layout import MoeModel
from moeprune.errors import InputError
from moeprune.io import surgery
from moeprune.io.paths import check_new, check_output
from moeprune.io.reader import Checkpoint
from moeprune.io.writer import atomic_folder, parse_size, write_checkpoint
from moeprune.loading import open_model
from moeprune.plan import HIGHER_PRUNED, LOWER_PRUNED, PrunePlan, check_feasible, make_plan, n_to_prune
from moeprune.progress import Progress
from moeprune.provenance import check_source, source_of
from moeprune.scores import Scores, ScoresFile, load_scores, save_scores
from moeprune.scoring.background import ScoringPass
from moeprune.scoring.criteria import WEIGHT_CRITERIA, score_layers
from moeprune.scoring.unified import NAMED, stats_criterion
from moeprune.scoring.weights import layer_bytes, weight_moments

if TYPE_CHECKING:
    from moeprune.scoring.stats import RoutingStats


CRITERIA: dict[str, str] = {
    **{name: c.doc for name, c in WEIGHT_CRITERIA.items()},
    **{name: f"{c.doc}; S({c.b},{c.alpha},{c.beta}); needs --stats" for name, c in NAMED.items()},
}
"""Every named criterion and what it computes; ``unified:b,α,β`` names any other S(b, α, β)."""


def inspect(model: str | os.PathLike[str]) -> dict[str, Any]:
    """Family, MoE layers, experts, top-k, layout and sizes, from config and headers only
    (for a hub id, only config files and safetensors headers are fetched)."""
    ckpt, moe = open_model(model, weights=False)
    with ckpt:
        expert_bytes = sum(layer_bytes(ckpt, layer) for layer in moe.layers)
        return {
            "path": str(ckpt.path),
            "family": moe.family.model_type,
            "layers": moe.n_layers,
            "moe_layers": [layer.index for layer in moe.layers],
            "experts": moe.n_experts,
            "expert_count_key": moe.count_key,
            "expert_sets": len(moe.family.expert_sets.routers) if moe.family.expert_sets else None,
            "top_k": moe.top_k,
            "groups": None
            if moe.groups is None
            else {"n_group": moe.groups.n_group, "topk_group": moe.groups.topk_group},
            "layout": moe.layers[0].layout,
            "dtypes": sorted({ckpt.info(n).dtype for layer in moe.layers for n in layer.expert_tensors}),
            "total_bytes": ckpt.total_bytes,
            "routed_expert_bytes": expert_bytes,
            "bytes_per_expert": expert_bytes // (moe.n_experts * len(moe.layers)),
            "files": sorted({t.file.name for t in ckpt.tensors.values()}),
        }


def _criteria(criterion: str, stats: RoutingStats | None) -> list[str]:
    """The criteria ``criterion`` stands for ("all": every one the inputs allow)."""
    if criterion == "all":
        return list(WEIGHT_CRITERIA) + (list(NAMED) if stats is not None else [])
    if criterion in WEIGHT_CRITERIA:
        return [criterion]
    found = stats_criterion(criterion)
    if found is None:
        raise InputError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}, unified:b,α,β or all")
    if stats is None:
        raise InputError(f"criterion {criterion!r} needs routing statistics: run `moeprune calibrate` and pass --stats")
    return [found.name]


def load_stats(path: str | os.PathLike[str], ckpt: Checkpoint, moe: MoeModel) -> RoutingStats:
    """A STATS folder, checked against the model."""
    from moeprune.scoring.stats import RoutingStats

    stats = RoutingStats.load(path)
    stats.check_model(ckpt, moe, path)
    mtp = [layer.index for layer in moe.layers if layer.index >= moe.n_layers]
    if mtp:
        raise InputError(
            f"this checkpoint has multi-token-prediction layers ({mtp[0]}...) that transformers does not run, so "
            "calibration has no statistics for them; use a weight criterion (e.g. aimer)"
        )
    return stats


def score(
    model: str | os.PathLike[str],
    criterion: str = "aimer",
    *,
    seed: int = 0,
    stats: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, Scores]:
    """Scores of every routed expert with one criterion, or all of them (``"all"``): weight
    criteria in one pass over the weights, statistics criteria from a STATS folder. With
    ``output``, also written there as scores.json (atomically; an existing file only with
    ``overwrite``), with the model they came from."""
    ckpt, moe = open_model(model)
    with ckpt:
        if output is not None:
            inputs = [ckpt.path] + ([Path(stats)] if stats is not None else [])
            check_new(check_output(output, inputs), overwrite, "file")
        routing = None if stats is None else load_stats(stats, ckpt, moe)
        result = _score(ckpt, moe, _criteria(criterion, routing), seed, progress, routing)
        if output is not None:
            save_scores(Path(output), result, source_of(str(model), ckpt, moe), overwrite=overwrite)
        return result


def _score(
    ckpt: Checkpoint,
    moe: MoeModel,
    names: list[str],
    seed: int,
    progress: Progress | None,
    stats: RoutingStats | None,
) -> dict[str, Scores]:
    from moeprune.scoring.criteria import WeightMoments
    from moeprune.scoring.quant import is_quantized, quantized_moments

    out: dict[str, Scores] = {}
    weight = [n for n in names if n in WEIGHT_CRITERIA]
    if weight:
        if any(WEIGHT_CRITERIA[n].needs_weights for n in weight) and is_quantized(ckpt, moe):
            moments = quantized_moments(ckpt, moe)  # FP8 / MXFP4: on the dequantized values
        elif any(WEIGHT_CRITERIA[n].needs_weights for n in weight):
            total = sum(layer_bytes(ckpt, layer) for layer in moe.layers)
            moments = weight_moments(ckpt, moe, None if progress is None else lambda b: progress("score", b, total))
        else:
            moments = {layer.index: WeightMoments.zeros(moe.n_experts) for layer in moe.layers}
        out |= {n: Scores(n, WEIGHT_CRITERIA[n].direction, score_layers(moments, n, seed)) for n in weight}
    for name in names:
        found = stats_criterion(name)
        if found is not None and stats is not None:
            out[name] = Scores(name, found.direction, found.scores(stats))
    return {n: out[n] for n in names}


def pruned_overlap(
    model: str | os.PathLike[str], results: dict[str, Scores], ratio: float
) -> dict[str, dict[str, float]]:
    """Mean over MoE layers of the Jaccard index of the sets each pair of criteria would prune
    at ``ratio`` (1 = the same experts everywhere)."""
    ckpt, moe = open_model(model, weights=False)
    ckpt.close()
    p = n_to_prune(moe.n_experts, ratio)
    plans = {
        name: make_plan(name, s.direction, s.layers, moe.n_experts, moe.top_k, p, moe.groups)
        for name, s in results.items()
    }
    out: dict[str, dict[str, float]] = {}
    for a, pa in plans.items():
        out[a] = {}
        for b, pb in plans.items():
            jac = [
                len(set(pa.layers[i].pruned) & set(pb.layers[i].pruned))
                / len(set(pa.layers[i].pruned) | set(pb.layers[i].pruned))
                for i in pa.layers
            ]
            out[a][b] = sum(jac) / len(jac)
    return out


def plan(
    model: str | os.PathLike[str],
    criterion: str | None = None,
    *,
    ratio: float | None = None,
    n_prune: int | None = None,
    seed: int = 0,
    scores: GivenScores = None,
    stats: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> PrunePlan:
    """The pruning plan (validated) without writing anything."""
    ckpt, moe = open_model(model)
    with ckpt:
        given = _given_scores(scores, criterion, ckpt, moe)
        criterion = given.criterion if given is not None else (criterion or "aimer")
        made = _plan(ckpt, moe, criterion, ratio, n_prune, seed, given, stats, progress)
        made.source = source_of(str(model), ckpt, moe)
        return made


GivenScores = Scores | ScoresFile | str | os.PathLike[str] | None
"""Scores chosen elsewhere: a `Scores`, a loaded scores.json, or the path of one."""


def _given_scores(given: GivenScores, criterion: str | None, ckpt: Checkpoint, moe: MoeModel) -> Scores | None:
    """The one `Scores` to prune with from ``given`` (a file's source checked against the model):
    ``criterion`` picks one of several, and must name the one a single-criterion file holds."""
    if given is None or isinstance(given, Scores):
        return given
    found = given if isinstance(given, ScoresFile) else load_scores(Path(given))
    check_source(found.source, ckpt, moe, "the scores given")
    if criterion is None and len(found.scores) > 1:
        raise InputError(f"the scores hold several criteria ({', '.join(found.scores)}); choose one with --criterion")
    if criterion is not None and criterion not in found.scores:
        raise InputError(
            f"--criterion {criterion} disagrees with the scores given, which are {', '.join(found.scores)}; "
            "drop --criterion or score with it first"
        )
    return found.scores[criterion] if criterion is not None else next(iter(found.scores.values()))


def _removed_per_layer(moe: MoeModel, ratio: float | None, n_prune: int | None) -> int:
    """Experts removed per MoE layer, checked against the routing before any weight is read."""
    p = n_to_prune(moe.n_experts, ratio, n_prune)
    check_feasible(moe.n_experts, moe.top_k, p, moe.groups)
    return p


def _plan(
    ckpt: Checkpoint,
    moe: MoeModel,
    criterion: str,
    ratio: float | None,
    n_prune: int | None,
    seed: int,
    scores: Scores | None,
    stats: str | os.PathLike[str] | None,
    progress: Progress | None,
) -> PrunePlan:
    p = _removed_per_layer(moe, ratio, n_prune)
    if scores is None:
        if criterion == "all":
            raise InputError(f"pruning needs one criterion ({', '.join(CRITERIA)}); 'all' is for scoring only")
        routing = None if stats is None else load_stats(stats, ckpt, moe)
        names = _criteria(criterion, routing)
        scores = _score(ckpt, moe, names, seed, progress, routing)[names[0]]
    want = {layer.index for layer in moe.layers}
    if set(scores.layers) != want or any(len(s) != moe.n_experts for s in scores.layers.values()):
        raise InputError(f"the scores do not match this model ({len(want)} MoE layers x {moe.n_experts} experts)")
    if scores.direction not in (HIGHER_PRUNED, LOWER_PRUNED):
        raise InputError(f"unknown score direction {scores.direction!r}; expected {HIGHER_PRUNED} or {LOWER_PRUNED}")
    bad = next((i for i, s in scores.layers.items() if not all(math.isfinite(v) for v in s)), None)
    if bad is not None:
        raise InputError(f"the scores of layer {bad} are not all finite numbers")
    made = make_plan(scores.criterion, scores.direction, scores.layers, moe.n_experts, moe.top_k, p, moe.groups)
    made.ratio = ratio if ratio is not None else made.ratio
    return made


def prune(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    criterion: str | None = None,
    *,
    ratio: float | None = None,
    n_prune: int | None = None,
    seed: int = 0,
    scores: GivenScores = None,
    stats: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    dry_run: bool = False,
    fsync: bool = False,
    progress: Progress | None = None,
) -> PrunePlan:
    """Score, select and write the pruned checkpoint to ``out`` (atomically; with ``fsync``, also
    durably). A weight criterion that reads the weights scores on a background thread while the
    output is written, each layer's experts as soon as that layer is scored (so ``progress`` may
    be called from that thread)."""
    out = Path(out)
    max_bytes = parse_size(max_shard_size)
    ckpt, moe = open_model(model)
    with ckpt:
        inputs = [ckpt.path] + [Path(p) for p in (stats, scores) if isinstance(p, (str, os.PathLike))]
        check_output(out, inputs)
        if not dry_run:
            check_new(out, overwrite, "folder")
        chosen = _given_scores(scores, criterion, ckpt, moe)
        criterion = chosen.criterion if chosen is not None else (criterion or "aimer")
        source = source_of(str(model), ckpt, moe)
        if dry_run:
            made = _plan(ckpt, moe, criterion, ratio, n_prune, seed, chosen, stats, progress)
            made.source = source
            return made
        scoring: ScoringPass | None = None
        kept: Callable[[int], list[int]]  # layer index -> its kept original ids
        if _scores_while_writing(ckpt, moe, criterion, chosen, stats):
            p = _removed_per_layer(moe, ratio, n_prune)
            scored = None if progress is None else lambda b, total: progress("score", b, total)
            scoring = ScoringPass(ckpt, moe, criterion, p, seed, scored)
            n_kept, kept = moe.n_experts - p, scoring.kept
        else:
            made = _plan(ckpt, moe, criterion, ratio, n_prune, seed, chosen, stats, progress)
            n_kept, kept = made.n_kept, lambda i: made.layers[i].kept
        tensors = surgery.output_tensors(ckpt, moe, n_kept, kept)
        total = sum(t.nbytes for t in tensors)
        with scoring or nullcontext(), atomic_folder(out, overwrite, durable=fsync) as tmp:
            if scoring is not None:
                scoring.start(list(dict.fromkeys(t.layer for t in tensors if t.layer is not None)))
            write_checkpoint(
                tmp,
                tensors,
                {"format": "pt", **ckpt.metadata},
                max_bytes,
                None if progress is None else lambda b: progress("write", b, total),
                durable=fsync,
            )
            if scoring is not None:
                made = scoring.plan()
                made.ratio = ratio if ratio is not None else made.ratio
            made.source = source
            (tmp / "config.json").write_text(json.dumps(surgery.pruned_config(moe, made), indent=2) + "\n")
            surgery.copy_side_files(ckpt.path, tmp)
            readme = ckpt.path / "README.md"
            original = readme.read_text(errors="replace") if readme.is_file() else None
            (tmp / "README.md").write_text(surgery.model_card(str(model), made, moe, original))
            made.save(tmp)
        return made


def _scores_while_writing(
    ckpt: Checkpoint, moe: MoeModel, criterion: str, scores: Scores | None, stats: str | os.PathLike[str] | None
) -> bool:
    """Whether prune scores on a background thread as it writes: for the criteria that read the
    weights; the plan is made first from given scores, statistics, for random, and for quantized
    weights (scored dequantized, all at once)."""
    from moeprune.scoring.quant import is_quantized

    c = WEIGHT_CRITERIA.get(criterion)
    return scores is None and stats is None and c is not None and c.needs_weights and not is_quantized(ckpt, moe)
